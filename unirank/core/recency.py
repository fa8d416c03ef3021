"""What the user just did: features of the last few events of a context's history, per candidate.

Contract: `recency_columns(tables, recent, recent_kinds, cand, cand_ctx, model_cand, e1)` gives, for each
candidate, the RECENCY_FEATURES from its context's last RECENT_EVENTS history events (most recent first,
entity index 0 = padding), each event weighted RECENT_DECAY ** position:

- `recent_affinity`: the candidate's collaborative-filtering factor against the weighted mean factor of
  those events (`history_affinity` reads the last 50 unweighted: the user's taste, not the session's);
- `recent_genre_match`: the weighted share of those events sharing a genre with the candidate;
- `last_co_clicks`: log co-clicks of the last event's title and the candidate (0 for a title added at
  run time, which has no statistics): the item-to-item evidence more-like-this uses, from what was
  engaged last;
- `last_from_search`: 1 when the last event came from a search (click or play), else 0: what just
  happened was a search — the transition UniSAR models — for the network to cross with the rest.

The history holds no timestamps, so recency is by position. Training (the log's clicks before each
request) and serving (live events, then the bundle's snapshot) call this one function.
"""

from __future__ import annotations

import numpy as np

from unirank.core.sorted_lookup import lookup, lookup_in_range
from unirank.core.tables import FeatureTables

RECENCY_FEATURES = ("recent_affinity", "recent_genre_match", "last_co_clicks", "last_from_search")
RECENT_EVENTS = 5
RECENT_DECAY = 0.5
SEARCH_KINDS = (1, 2)  # `unirank.core.history.event_kind`: search click, search play


def recent_weights(recent: np.ndarray) -> np.ndarray:
    """(B, k) weight of each recent event: RECENT_DECAY ** position, 0 for padding."""
    return np.where(recent > 0, RECENT_DECAY ** np.arange(recent.shape[1], dtype=np.float32), 0.0).astype(np.float32)


def recency_columns(
    t: FeatureTables,
    recent: np.ndarray,
    recent_kinds: np.ndarray,
    cand: np.ndarray,
    cand_ctx: np.ndarray,
    model_cand: np.ndarray,
    e1: int,
    items: np.ndarray | None = None,
) -> np.ndarray:
    """(N, len(RECENCY_FEATURES)) float32; `recent`/`recent_kinds` (B, RECENT_EVENTS); `items`: the
    candidates' item factors when the caller has them. One context (B = 1, the service's path) uses its
    vectors as they are and finds the last title's co-clicks in its own slice of the table; the values
    are the same either way."""
    out = np.zeros((len(cand), len(RECENCY_FEATURES)), np.float32)
    if not recent.any():
        return out
    w = recent_weights(recent)
    total = w.sum(1)
    has = total > 0
    mean = np.matmul(w[:, None, :], t.item_factors[recent])[:, 0] / np.where(has, total, 1.0)[:, None]
    items = t.item_factors[cand] if items is None else items
    cand_bits = t.genre_bits[cand]
    if len(recent) == 1:  # one context: its vectors against every row, no per-candidate copies of them
        out[:, 0] = np.einsum("f,nf->n", mean[0], items)
        shared = (cand_bits[:, None, :] & t.genre_bits[recent[0]][None, :, :]).any(-1)  # (N, k)
        # sums of at most k powers of RECENT_DECAY: exact in float32, the same in any order
        out[:, 1] = np.einsum("k,nk->n", w[0], shared) / (total[0] if has[0] else 1.0)
    else:
        out[:, 0] = np.einsum("nf,nf->n", mean[cand_ctx], items)
        shared = (t.genre_bits[recent][cand_ctx] & cand_bits[:, None, :]).any(-1)  # (N, k)
        out[:, 1] = np.einsum("nk,nk->n", w[cand_ctx], shared) / np.where(has, total, 1.0)[cand_ctx]
    last = recent[:, 0]
    if len(last) == 1:
        if 0 < last[0] < e1:
            (co,) = lookup_in_range(t.co_keys, (t.co_clicks,), int(last[0]), e1, model_cand)
            out[:, 2] = np.where(cand < e1, np.log1p(co), 0.0)
    else:
        last = last[cand_ctx]
        known = (last > 0) & (last < e1) & (cand < e1)
        if known.any():
            out[:, 2] = np.where(known, np.log1p(lookup(t.co_keys, t.co_clicks, last * e1 + model_cand)), 0.0)
    kind = recent_kinds[:, 0]
    out[:, 3] = (((kind == SEARCH_KINDS[0]) | (kind == SEARCH_KINDS[1])) & has)[cand_ctx]
    return out
