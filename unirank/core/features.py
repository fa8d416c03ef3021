"""Feature encoding shared by training and serving: unified contexts + candidates -> model inputs.

Inputs are compact: integer ids and a few floats; embedding look-ups happen inside the model. A batch
holds B contexts and N candidates; `cand_ctx[n]` names the context of candidate n, so one request is
B=1 and the context part is computed once and broadcast inside the model. The service calls exactly
these functions with B=1 (or with several requests when micro-batching).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np

from unirank.core.context import TASK_INDEX, UnifiedContext, personalization_rank
from unirank.core.history import HISTORY_LENGTH
from unirank.core.lexical import LEXICAL_FEATURES, lexical_evidence, match_features_many
from unirank.core.recency import RECENCY_FEATURES, RECENT_EVENTS, recency_columns
from unirank.core.sorted_lookup import lookup as _lookup
from unirank.core.sorted_lookup import lookup_in_range as _lookup_in_range
from unirank.core.tables import FeatureTables
from unirank.core.text import MAX_QUERY_TOKENS, token_ids

DENSE_FEATURES = (
    "pop_global",
    "pop_country",
    "release_year",
    "qe_clicks",
    "qe_ctr",
    "title_prefix",
    "token_match",
    "co_clicks",
    "genre_jaccard",
    "als_affinity",
    "history_affinity",
    "query_length",
    *LEXICAL_FEATURES,
    *RECENCY_FEATURES,
)
_LEXICAL = slice(DENSE_FEATURES.index(LEXICAL_FEATURES[0]), DENSE_FEATURES.index(LEXICAL_FEATURES[-1]) + 1)
_RECENCY = slice(DENSE_FEATURES.index(RECENCY_FEATURES[0]), DENSE_FEATURES.index(RECENCY_FEATURES[-1]) + 1)
CTX_IDS = ("task", "country", "cluster", "source_entity", "user")
CAND_IDS = ("entity", "kind")
INPUT_NAMES = ("ctx_ids", "ctx_query", "cand_ids", "cand_genres", "cand_dense", "cand_ctx")
HISTORY_INPUTS = ("ctx_hist", "ctx_hist_kind")  # (B, H): entity index and event kind, most recent first; 0 pad
TEXT_INPUTS = ("cand_text",)  # (N, TEXT_DIM + 2): the candidate title's text features


# The graph of a bundle with the entity side inside (model_export.entity_graph) gathers each candidate's
# id embedding, kind embedding and genre bag from the table ENTITY_SIDE_TABLE by its entity index
# (ENTITY_SIDE_INPUT) instead of taking the ENTITY_COLUMNS.
ENTITY_SIDE_INPUT = "cand_entity"
ENTITY_SIDE_TABLE = "entity_side"
ENTITY_COLUMNS = ("cand_ids", "cand_genres")


def graph_input_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """The inputs of the graph with the entity side inside, from the model's (`ModelSpec.input_names`)."""
    out: list[str] = []
    for name in names:
        if name in ENTITY_COLUMNS:
            name = ENTITY_SIDE_INPUT
        if name not in out:
            out.append(name)
    return tuple(out)


def entity_side_inputs(tables: FeatureTables, entities: np.ndarray, n_model_entities: int) -> dict[str, np.ndarray]:
    """What the entity-side rows of `entities` (indices into `tables`) are made from: the model's id of each
    (0, the unknown entity, for one added after training), its kind and its genre ids."""
    entities = np.asarray(entities, np.int64)
    return {
        "entity": np.where(entities <= n_model_entities, entities, 0),
        "kind": tables.kind[entities],
        "genres": np.ascontiguousarray(tables.genre_ids[entities]),
    }


def input_names(history_encoder: bool, text_features: bool = False) -> tuple[str, ...]:
    """The model's inputs: the base six, plus the history tensors and the text features when it uses them."""
    return INPUT_NAMES + (HISTORY_INPUTS if history_encoder else ()) + (TEXT_INPUTS if text_features else ())


def history_inputs(entities: np.ndarray, kinds: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """One context's history tensors, (1, length) each, from its most-recent-first events."""
    hist = np.zeros((1, length), np.int64)
    kind = np.zeros((1, length), np.int64)
    n = min(length, len(entities))
    hist[0, :n] = entities[:n]
    kind[0, :n] = kinds[:n]
    return hist, kind


CTR_SMOOTHING = 10.0


@dataclass
class EncodedContexts:
    ctx_ids: np.ndarray  # (B, 5) int64
    ctx_query: np.ndarray  # (B, MAX_QUERY_TOKENS) int64
    queries: list[str]
    query_ids: np.ndarray  # (B,) id in the query-statistics vocabulary, 0 unknown
    user_vec: np.ndarray  # (B, F) collaborative-filtering user factors
    hist_vec: np.ndarray  # (B, F) mean item factor of the recent history
    source: np.ndarray  # (B,) source entity index (ctx_ids[:, 3] holds 0 for one added after training)
    hist_text: np.ndarray | None  # (B, TEXT_DIM) mean title text vector of the recent history (None: no text features)
    recent: np.ndarray  # (B, RECENT_EVENTS) entity indices of the last events, most recent first (0: none)
    recent_kinds: np.ndarray  # (B, RECENT_EVENTS) their event kinds


def _dense_with_statistics(
    t: FeatureTables, cand: np.ndarray, country: int | np.ndarray, clicks: np.ndarray, impressions: np.ndarray
) -> np.ndarray:
    """The dense feature array of `cand`, its first five columns written (popularity, popularity in the
    country, year, log clicks, smoothed CTR; `country` an index or one per candidate), each cast to
    float32 as it is written; the encoders fill in the rest."""
    dense = np.empty((len(cand), len(DENSE_FEATURES)), np.float32)
    dense[:, 0] = t.pop[cand, 0]
    dense[:, 1] = t.pop[cand, country]
    dense[:, 2] = t.year_feature[cand]
    dense[:, 3] = np.log1p(clicks)
    dense[:, 4] = np.where(impressions > 0, (clicks + CTR_SMOOTHING * t.ctr_prior) / (impressions + CTR_SMOOTHING), 0.0)
    return dense


def _genre_overlap(bits_a: np.ndarray, bits_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared and combined genre counts of packed genre rows (`FeatureTables.genre_bits`)."""
    return np.bitwise_count(bits_a & bits_b).sum(-1), np.bitwise_count(bits_a | bits_b).sum(-1)


def _columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.stack([a, b], axis=1) without stack's per-call overhead."""
    out = np.empty((len(a), 2), np.result_type(a, b))
    out[:, 0], out[:, 1] = a, b
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-9), 0.0).astype(np.float32)


def text_features(text_vec: np.ndarray, source: np.ndarray, cand: np.ndarray, hist_text: np.ndarray) -> np.ndarray:
    """(N, TEXT_DIM + 2): the candidate title's text vector; its cosine with the source title's
    (more-like-this; 0 without a source) — what links a cold sequel to the title being watched; and its
    cosine with the mean text of the user's recent titles (0 without history) — what a new title is
    about against what this user watches."""
    vec = text_vec[cand]
    return np.concatenate([vec, _cosine(vec, text_vec[source])[:, None], _cosine(vec, hist_text)[:, None]], 1)


def history_vector(tables: FeatureTables, recent: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """Mean collaborative-filtering factor (or row of `table`, e.g. text_vec) of the most recent
    HISTORY_LENGTH engaged entities."""
    table = tables.item_factors if table is None else table
    recent = np.asarray(recent, np.int64)[:HISTORY_LENGTH]
    if recent.size == 0:
        return np.zeros(table.shape[1], np.float32)
    return table[recent].mean(0)


class FeatureEncoder:
    def __init__(
        self,
        tables: FeatureTables,
        level: str,
        text: bool = True,
        lexical: bool = True,
        recency: bool = True,
        entity_in_graph: bool = False,
    ):
        """level: the personalization level of the model these features feed; text: whether to build
        `cand_text` (training encodes it for every option; the service only for models that read it);
        lexical, recency: whether to compute the LEXICAL_FEATURES, the RECENCY_FEATURES (zeros otherwise: a
        model without them masks them); entity_in_graph: the candidates' entity indices (ENTITY_SIDE_INPUT)
        instead of the ENTITY_COLUMNS, for a graph that gathers those itself."""
        self.tables = tables
        self.level = level
        self.text = text
        self.lexical = lexical
        self.recency = recency
        self.entity_in_graph = entity_in_graph
        self._e1 = tables.n_model_entities + 1  # indices from here on: added at run time, unknown to the model

    def entity_indices(self, entity_ids) -> np.ndarray:
        ids = entity_ids if isinstance(entity_ids, list) else list(entity_ids)
        return np.fromiter(map(self.tables.entity_index.get, ids, repeat(0, len(ids))), np.int64, len(ids))

    def unique_entity_indices(self, entity_ids: list[str], exclude: str | None = None) -> tuple[list[str], np.ndarray]:
        """The ids without repeats (each where it first appears) and without `exclude`, and their indices.
        The usual list (every id known, none repeated) is checked on the indices, without a dict of the ids."""
        indices = self.entity_indices(entity_ids)
        ordered = np.sort(indices)
        dropped = self.tables.entity_index.get(exclude, 0) if exclude is not None else 0
        every_known_once = ordered.size > 0 and ordered[0] > 0 and not (ordered[1:] == ordered[:-1]).any()
        if every_known_once and not (dropped and (indices == dropped).any()):
            return entity_ids, indices
        ids = [i for i in dict.fromkeys(entity_ids) if i != exclude]
        return ids, self.entity_indices(ids)

    def encode_contexts(
        self,
        contexts: list[UnifiedContext],
        hist_vec: np.ndarray | None = None,
        level: str | None = None,
        hist_text: np.ndarray | None = None,
        recent: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> EncodedContexts:
        """hist_vec: (B, F) from `history_vector` (serving) or `history_vectors` (training); hist_text:
        (B, TEXT_DIM), the same over the text table; recent: (entities, kinds) of each context's history,
        most recent first, (B, >= 1) each (the first RECENT_EVENTS are read; None: no history)."""
        t, B = self.tables, len(contexts)
        rank = personalization_rank(level or self.level)
        ids = np.zeros((B, len(CTX_IDS)), np.int64)
        query = np.zeros((B, MAX_QUERY_TOKENS), np.int64)
        qids = np.zeros(B, np.int64)
        source = np.zeros(B, np.int64)
        for i, c in enumerate(contexts):
            user = t.user_index.get(c.user_id, 0) if c.user_id is not None else 0
            source[i] = t.entity_index.get(c.source_entity_id, 0) if c.source_entity_id else 0
            ids[i] = (
                TASK_INDEX.get(c.task, 0),
                t.country_index.get(c.country, 0) if c.country else 0,
                t.user_cluster[user] if rank >= 1 else 0,
                source[i] if source[i] < self._e1 else 0,
                user if rank >= 2 else 0,
            )
            toks = token_ids(c.query)
            query[i, : len(toks)] = toks
            qids[i] = t.query_index.get(c.query, 0)
        F = t.item_factors.shape[1]
        text = np.zeros((B, t.text_vec.shape[1]), np.float32) if self.text else None
        if rank >= 2:
            user_vec = t.user_factors[ids[:, 4]]
            hist = np.zeros((B, F), np.float32) if hist_vec is None else np.asarray(hist_vec, np.float32)
            text = text if hist_text is None or text is None else np.asarray(hist_text, np.float32)
        else:
            user_vec = np.zeros((B, F), np.float32)
            hist = np.zeros((B, F), np.float32)
        last = np.zeros((B, RECENT_EVENTS), np.int64)
        last_kinds = np.zeros((B, RECENT_EVENTS), np.int64)
        if rank >= 2 and recent is not None and self.recency:
            k = min(RECENT_EVENTS, recent[0].shape[1])
            last[:, :k], last_kinds[:, :k] = recent[0][:, :k], recent[1][:, :k]
        return EncodedContexts(
            ids, query, [c.query for c in contexts], qids, user_vec, hist, source, text, last, last_kinds
        )

    def encode_candidates(self, ctx: EncodedContexts, cand: np.ndarray, cand_ctx: np.ndarray) -> dict[str, np.ndarray]:
        """The model's inputs for candidates `cand` (entity indices, 0 = unknown).

        An entity added at run time has its content features (kind, genres, year, title, text) but no
        statistics and, for the model, the unknown entity's id."""
        t, e1 = self.tables, self._e1
        cand = np.asarray(cand, np.int64)
        cand_ctx = np.asarray(cand_ctx, np.int64)
        country = ctx.ctx_ids[cand_ctx, 1]
        source = ctx.source[cand_ctx]
        trained = cand < e1
        model_cand = np.where(trained, cand, 0)
        qe_key = ctx.query_ids[cand_ctx] * e1 + model_cand
        clicks = np.where(trained, _lookup(t.qe_keys, t.qe_clicks, qe_key), 0.0)
        impressions = np.where(trained, _lookup(t.qe_keys, t.qe_impressions, qe_key), 0.0)
        co = np.where(trained & (source < e1), _lookup(t.co_keys, t.co_clicks, source * e1 + model_cand), 0.0)
        inter, union = _genre_overlap(t.genre_bits[source], t.genre_bits[cand])
        titles, queries = t.norm_titles, ctx.queries
        match = np.zeros((len(cand), 2), np.float32)
        lexical = np.zeros((len(cand), len(LEXICAL_FEATURES)), np.float32)
        with_query = np.flatnonzero(np.array([bool(q) for q in queries], bool)[cand_ctx])
        if with_query.size:  # prequery contexts have no query: nothing to match
            rows = with_query[np.argsort(cand_ctx[with_query], kind="stable")]  # each context's rows together
            of = cand_ctx[rows]
            ends = [*(np.flatnonzero(of[1:] != of[:-1]) + 1).tolist(), len(rows)]
            of, entities, values, start = of.tolist(), cand[rows].tolist(), [], 0
            for end in ends:
                values += match_features_many(queries[of[start]], [titles[e] for e in entities[start:end]])
                if self.lexical:
                    lexical[rows[start:end]] = lexical_evidence(
                        queries[of[start]], cand[rows[start:end]], t.title_index, t.facet_index
                    )
                start = end
            match[rows] = np.array(values, np.float32).reshape(-1, 2)
        qlen = np.array([len(q) for q in queries], np.float32)[cand_ctx]
        items = t.item_factors[cand]
        dense = _dense_with_statistics(t, cand, country, clicks, impressions)
        dense[:, 5:7] = match
        dense[:, 7] = np.log1p(co)
        dense[:, 8] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        dense[:, 9] = np.einsum("nf,nf->n", ctx.user_vec[cand_ctx], items)
        dense[:, 10] = np.einsum("nf,nf->n", ctx.hist_vec[cand_ctx], items)
        dense[:, 11] = np.minimum(qlen, 40.0) / 20.0
        dense[:, _LEXICAL] = lexical
        dense[:, _RECENCY] = recency_columns(t, ctx.recent, ctx.recent_kinds, cand, cand_ctx, model_cand, e1, items)
        return self._inputs(ctx, cand, cand_ctx, model_cand, dense, source)

    def encode_one(self, ctx: EncodedContexts, cand: np.ndarray) -> dict[str, np.ndarray]:
        """`encode_candidates(ctx, cand, zeros)` for one context, value for value (the parity tests hold
        it to that): the service's path. The context's fields are scalars here, and each statistic is
        looked up in its context's slice of the sorted key table instead of the whole table."""
        t, e1 = self.tables, self._e1
        cand = np.asarray(cand, np.int64)
        n = len(cand)
        cand_ctx = np.zeros(n, np.int64)
        country, source, qid = int(ctx.ctx_ids[0, 1]), int(ctx.source[0]), int(ctx.query_ids[0])
        trained = cand < e1
        every_trained = bool(trained.all())  # the usual case: nothing to mask
        model_cand = cand if every_trained else np.where(trained, cand, 0)
        clicks, impressions = _lookup_in_range(t.qe_keys, (t.qe_clicks, t.qe_impressions), qid, e1, model_cand)
        if not every_trained:
            clicks, impressions = np.where(trained, clicks, 0.0), np.where(trained, impressions, 0.0)
        if source < e1:
            (co,) = _lookup_in_range(t.co_keys, (t.co_clicks,), source, e1, model_cand)
            if not every_trained:
                co = np.where(trained, co, 0.0)
        else:
            co = np.zeros(n, np.float32)
        source_genres = t.genre_bits[source]
        source_has_genres = bool(source_genres.any())
        if source_has_genres:
            inter, union = _genre_overlap(source_genres, t.genre_bits[cand])
        query = ctx.queries[0]
        dense = _dense_with_statistics(t, cand, country, clicks, impressions)
        if query:
            titles = t.norm_titles
            dense[:, 5:7] = np.array(
                match_features_many(query, [titles[e] for e in cand.tolist()]), np.float32
            ).reshape(-1, 2)
            dense[:, _LEXICAL] = lexical_evidence(query, cand, t.title_index, t.facet_index) if self.lexical else 0.0
        else:  # prequery contexts have no query: nothing to match
            dense[:, 5:7] = 0.0
            dense[:, _LEXICAL] = 0.0
        dense[:, 7] = np.log1p(co)
        if source_has_genres:
            dense[:, 8] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        else:  # no source, or one without genres: no genre is shared, the Jaccard is 0 (as the batch path finds)
            dense[:, 8] = 0.0
        items = t.item_factors[cand]
        # the context's one vector against every row: the same products and sums as the batch path's
        dense[:, 9] = np.einsum("f,nf->n", ctx.user_vec[0], items)
        dense[:, 10] = np.einsum("f,nf->n", ctx.hist_vec[0], items)
        dense[:, 11] = np.minimum(np.float32(len(query)), 40.0) / 20.0
        dense[:, _RECENCY] = recency_columns(t, ctx.recent, ctx.recent_kinds, cand, cand_ctx, model_cand, e1, items)
        return self._inputs(ctx, cand, cand_ctx, model_cand, dense, ctx.source[cand_ctx])

    def _inputs(self, ctx, cand, cand_ctx, model_cand, dense, source) -> dict[str, np.ndarray]:
        """The model's input tensors from the encoded parts (`source`: each candidate's source entity)."""
        t = self.tables
        inputs = {"ctx_ids": ctx.ctx_ids, "ctx_query": ctx.ctx_query}
        if self.entity_in_graph:
            inputs[ENTITY_SIDE_INPUT] = cand
        else:
            inputs["cand_ids"] = _columns(model_cand, t.kind[cand])
            inputs["cand_genres"] = t.genre_ids[cand]
        inputs["cand_dense"] = dense
        inputs["cand_ctx"] = cand_ctx
        if self.text:
            inputs["cand_text"] = text_features(t.text_vec, source, cand, ctx.hist_text[cand_ctx])
        return inputs


def _click_windows(click_user, click_ts, req_user, req_ts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The click log sorted by (user, time), and for each request the slice [first, end) of its user's
    clicks strictly before its time."""
    t0 = min(click_ts.min(initial=0), req_ts.min(initial=0))
    span = int(max(click_ts.max(initial=0), req_ts.max(initial=0)) - t0) + 1
    click_key = click_user.astype(np.int64) * span + (click_ts - t0)
    order = np.argsort(click_key, kind="stable")
    click_key = click_key[order]
    first = np.searchsorted(click_key, req_user.astype(np.int64) * span, side="left")
    end = np.searchsorted(click_key, req_user.astype(np.int64) * span + (req_ts - t0), side="left")
    return order, first, end


def history_matrices(
    click_user: np.ndarray,
    click_ts: np.ndarray,
    click_entity: np.ndarray,
    click_kind: np.ndarray,
    req_user: np.ndarray,
    req_ts: np.ndarray,
    length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Training path of `history_inputs`, vectorised: each request's last `length` clicks strictly before
    its time, most recent first, as (R, length) entity indices and kinds."""
    order, first, end = _click_windows(click_user, click_ts, req_user, req_ts)
    ce, ck = click_entity[order], click_kind[order]
    pos = end[:, None] - 1 - np.arange(length)[None, :]
    valid = (pos >= first[:, None]) & (req_user[:, None] > 0)
    pos = np.clip(pos, 0, max(len(ce) - 1, 0))
    if len(ce) == 0:
        return np.zeros((len(req_user), length), np.int64), np.zeros((len(req_user), length), np.int64)
    return np.where(valid, ce[pos], 0).astype(np.int64), np.where(valid, ck[pos], 0).astype(np.int64)


def history_vectors(
    tables: FeatureTables,
    click_user: np.ndarray,
    click_ts: np.ndarray,
    click_entity: np.ndarray,
    req_user: np.ndarray,
    req_ts: np.ndarray,
    table: np.ndarray | None = None,
) -> np.ndarray:
    """Training path of `history_vector`, vectorised: for each request, the mean item factor (or row of
    `table`) of the user's last HISTORY_LENGTH clicks strictly before the request time."""
    table = tables.item_factors if table is None else table
    F = table.shape[1]
    order, first, end = _click_windows(click_user, click_ts, req_user, req_ts)
    ce = click_entity[order]
    csum = np.zeros((len(ce) + 1, F), np.float64)
    csum[1:] = np.cumsum(table[ce], axis=0)
    start = np.maximum(first, end - HISTORY_LENGTH)
    n = (end - start)[:, None]
    return np.where(n > 0, (csum[end] - csum[start]) / np.maximum(n, 1), 0.0).astype(np.float32)
