"""Ranking metrics per request that ignore everything carrying no information: row order and id spelling.

Contract: `ranking_metrics(group, scores, labels, k)` gives, per request with at least one positive, NDCG@k,
HR@k, MRR and AUC (NaN without a negative), as arrays aligned on those requests in the order of their
group ids. Candidates with equal scores are a tie, and a tie counts as its expected value over every order
of the tied candidates (all equally likely): what serving would earn on average when it breaks ties by
something unrelated to the label, such as the entity id. Pessimistic tie-breaking (positives last) would
punish a model that rightly gives identical rows identical scores; breaking ties by row order (what this
replaced) rewards any log stored in display order, where the clicked row tends to come first.
A constant scorer therefore gets the random-ranking expectation, and permuting rows inside any request
changes nothing (tests/test_metrics.py).

Exact expectations: DCG by linearity (each slot of a tie block holds a positive with probability m/t);
AUC with mid-ranks (Mann-Whitney, a tie counts one half); HR@k and MRR from the distribution of the first
positive's slot inside the first tie block that holds one: P(offset = j) = C(t-j-1, m-1) / C(t, m).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

K = 10


def _first_slot_distribution(t: np.ndarray, m: np.ndarray, width: int) -> np.ndarray:
    """P(the first of m positives placed uniformly in t slots is at offset j), j = 0..width-1, per row."""
    j = np.arange(width)[None, :]
    t, m = t[:, None].astype(float), m[:, None].astype(float)
    valid = j <= t - m
    with np.errstate(invalid="ignore", divide="ignore"):
        log_p = (
            gammaln(t - j)
            - gammaln(m)
            - gammaln(t - j - m + 1)  # C(t-j-1, m-1)
            - (gammaln(t + 1) - gammaln(m + 1) - gammaln(t - m + 1))  # C(t, m)
        )
    return np.where(valid, np.exp(np.where(valid, log_p, 0.0)), 0.0)


def ranking_metrics(group: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = K) -> dict[str, np.ndarray]:
    group = np.asarray(group)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((-scores, group))  # any order inside a tie: the result does not depend on it
    g, s, y = group[order], scores[order], np.asarray(labels)[order] > 0
    n = len(g)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if n else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, n])
    gid = np.repeat(np.arange(len(starts)), sizes)
    pos = np.arange(n) - np.repeat(starts, sizes)  # slot in the request, 0 = top
    # tie blocks: runs of one score inside one request
    block_start = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])] if n else np.zeros(0, bool)
    bstarts = np.flatnonzero(block_start)
    bsizes = np.diff(np.r_[bstarts, n])
    bid = np.repeat(np.arange(len(bstarts)), bsizes)
    b_pos = np.bincount(bid, weights=y, minlength=len(bstarts))  # positives per block
    b_first = pos[bstarts]  # the block's first slot in its request
    b_req = gid[bstarts]

    discount = np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0)
    b_discount = np.bincount(bid, weights=discount, minlength=len(bstarts))
    dcg = np.bincount(b_req, weights=b_discount * b_pos / bsizes, minlength=len(starts))
    n_pos = np.bincount(gid, weights=y, minlength=len(starts))
    ideal_cum = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))]
    ideal = ideal_cum[np.minimum(n_pos, k).astype(int)]

    # the first block holding a positive, per request
    hit_blocks = np.flatnonzero(b_pos > 0)
    first_block = np.full(len(starts), len(bstarts))
    np.minimum.at(first_block, b_req[hit_blocks], hit_blocks)
    has = n_pos > 0
    fb = first_block[has]
    t, m, a = bsizes[fb], b_pos[fb].astype(int), b_first[fb]
    width = int((t - m).max()) + 1 if len(fb) else 1
    p_first = _first_slot_distribution(t, m, width)
    slots = a[:, None] + np.arange(width)[None, :]
    hr = (p_first * (slots < k)).sum(axis=1)
    mrr = (p_first / (slots + 1.0)).sum(axis=1)

    # AUC with mid-ranks: ascending rank of a block = after every lower-scored candidate of the request
    b_low = (sizes[b_req] - b_first - bsizes).astype(float)  # candidates scored below the block
    mid_rank = b_low + (bsizes + 1) / 2.0
    pos_rank_sum = np.bincount(b_req, weights=b_pos * mid_rank, minlength=len(starts))
    n_neg = sizes - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return {
        "ndcg@10": (dcg / np.maximum(ideal, 1e-12))[has],
        "hr@10": hr,
        "mrr": mrr,
        "auc": np.where(n_neg > 0, auc, np.nan)[has],
    }


def summarize(per_request: dict[str, np.ndarray]) -> dict[str, float]:
    out = {m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for m, v in per_request.items()}
    out["requests"] = int(len(per_request["mrr"]))
    return out
