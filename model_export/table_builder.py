"""Building the feature tables of a bundle from the feature window (training only: scikit-learn's
k-means for the user clusters, `implicit`'s ALS for the collaborative factors, MiniLM for title text).

Contract: `build_tables(entities, feature_events, all_events)` returns the `FeatureTables` the
service loads; statistics come from `feature_events` only, vocabularies from the whole log. A log too
large for memory goes through the same parts a batch at a time (`Vocabularies`, `WindowStatistics`,
`ClickLog`, then `tables_from`): the tables are the same whatever the batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirank.core.history import HISTORY_LENGTH, event_kinds
from unirank.core.tables import KINDS, FeatureTables
from unirank.core.text import normalize
from unirank.core.text_features import TEXT_DIM, TextProjection
from unirank.core.vocab import Task

FAVOURITES = 100  # entities kept per user cluster (prequery retrieval)


@dataclass
class Vocabularies:
    """Ids -> table rows: entities and genres from the catalogue, countries and users from the whole log
    (index 0 is the unknown one of each)."""

    entity_ids: list[str]
    genres: list[str]
    countries: list[str]
    user_ids: list[str]

    @classmethod
    def of(cls, entities: pa.Table, log_countries: set[str], log_users: set[str]) -> Vocabularies:
        return cls(
            entity_ids=[""] + entities.column("entity_id").to_pylist(),
            genres=[""] + sorted({g for gs in entities.column("genres").to_pylist() for g in gs}),
            countries=[""]
            + sorted(set(log_countries) | {c for cs in entities.column("countries").to_pylist() for c in cs}),
            # an empty user id is an anonymous visitor: the unknown user (index 0), never a user of its own
            user_ids=[""] + sorted(set(log_users) - {""}),
        )

    @classmethod
    def of_tables(cls, tables: FeatureTables) -> Vocabularies:
        """A bundle's vocabularies (to read a log with the ids it was trained with)."""
        return cls(list(tables.entity_ids), list(tables.genres), list(tables.countries), list(tables.user_ids))

    def __post_init__(self) -> None:
        self.eidx = {e: i for i, e in enumerate(self.entity_ids) if i}
        self.gidx = {g: i for i, g in enumerate(self.genres) if i}
        self.cidx = {c: i for i, c in enumerate(self.countries) if i}
        self.uidx = {u: i for i, u in enumerate(self.user_ids) if i}

    def entities_of(self, column) -> np.ndarray:
        get = self.eidx.get
        return np.fromiter((get(e, 0) if e else 0 for e in column.to_pylist()), np.int64, count=len(column))

    def users_of(self, column) -> np.ndarray:
        get = self.uidx.get
        return np.fromiter((get(u, 0) for u in column.to_pylist()), np.int64, count=len(column))


def log_values(events: pa.Table) -> tuple[set[str], set[str]]:
    """The countries and users of (part of) a log, for `Vocabularies.of`."""
    return set(events.column("country").unique().to_pylist()), set(events.column("user_id").unique().to_pylist())


class WindowStatistics:
    """The feature window's statistics, a batch of its events at a time. Every statistic is a sum or a set
    of keys, so the totals do not depend on how the window is cut into batches, nor on row order."""

    def __init__(self, v: Vocabularies):
        self.v = v
        self.pop = np.zeros((len(v.entity_ids), len(v.countries)), np.float64)
        self.query_entity: list[pa.Table] = []  # (query, entity, clicks, impressions) per batch
        self.search_clicks, self.search_rows = 0.0, 0
        self.co_keys: list[np.ndarray] = []
        self.click_users: list[np.ndarray] = []
        self.click_entities: list[np.ndarray] = []

    def add(self, f: pa.Table) -> None:
        v, E1 = self.v, len(self.v.entity_ids)
        tgt = v.entities_of(f.column("target_entity_id"))
        clicked = f.column("clicked").to_numpy(zero_copy_only=False).astype(np.int64)
        ctry = np.fromiter((v.cidx.get(c, 0) for c in f.column("country").to_pylist()), np.int64, count=f.num_rows)
        np.add.at(self.pop[:, 0], tgt, clicked)
        np.add.at(self.pop, (tgt, ctry), clicked)
        # query-entity statistics: search queries as typed, normalised (once per distinct query of the batch)
        task = np.asarray(f.column("task").to_pylist(), dtype=object)
        is_search = task == Task.SEARCH.value
        raw, inverse = np.unique(
            np.asarray(f.column("query").fill_null("").to_pylist(), dtype=object), return_inverse=True
        )
        qnorm = np.array([normalize(q) for q in raw], dtype=object)[inverse]
        qnorm[~is_search] = ""
        sel = is_search & (qnorm != "")
        self.search_clicks += float(clicked[sel].sum())
        self.search_rows += int(sel.sum())
        pairs = pa.table({"q": pa.array(qnorm[sel], pa.string()), "e": tgt[sel], "c": clicked[sel]})
        self.query_entity.append(pairs.group_by(["q", "e"]).aggregate([("c", "sum"), ("c", "count")]))
        # source-target co-engagement from more_like_this clicks
        mlt = (task == Task.MORE_LIKE_THIS.value) & (clicked > 0)
        src = v.entities_of(f.column("source_entity_id").filter(pa.array(mlt)))
        self.co_keys.append(src * E1 + tgt[mlt])
        c = clicked > 0
        self.click_users.append(v.users_of(f.column("user_id").filter(pa.array(c))))
        self.click_entities.append(tgt[c])

    def query_statistics(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, float]:
        """(queries, keys = query index * entities + entity, clicks, impressions, CTR prior)."""
        E1 = len(self.v.entity_ids)
        pairs = (
            pa.concat_tables(self.query_entity)
            if self.query_entity
            else pa.table({"q": [], "e": [], "c_sum": [], "c_count": []})
        )
        pairs = pairs.group_by(["q", "e"]).aggregate([("c_sum", "sum"), ("c_count", "sum")])
        names = pairs.column("q").to_pylist()
        queries = [""] + sorted(set(names) - {""})
        qidx = {q: i for i, q in enumerate(queries)}
        keys = np.fromiter((qidx[q] for q in names), np.int64, count=len(names)) * E1 + pairs.column("e").to_numpy()
        order = np.argsort(keys)
        clicks = pairs.column("c_sum_sum").to_numpy()[order].astype(np.float32)
        impressions = pairs.column("c_count_sum").to_numpy()[order].astype(np.float32)
        prior = self.search_clicks / self.search_rows if self.search_rows else 0.1
        return queries, keys[order], clicks, impressions, prior


class ClickLog:
    """Every click of the log as (user, time ms, entity, event kind) rows, in the log's order; the history
    snapshot and the history features read it."""

    def __init__(self, v: Vocabularies):
        self.v = v
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, events: pa.Table) -> None:
        clicks = events.filter(pc.field("clicked"))
        kinds = event_kinds(
            clicks.column("task").to_numpy(zero_copy_only=False), clicks.column("played").to_numpy(zero_copy_only=False)
        )
        self.parts.append(
            (
                self.v.users_of(clicks.column("user_id")),
                clicks.column("timestamp").cast(pa.int64()).to_numpy(),
                self.v.entities_of(clicks.column("target_entity_id")),
                kinds,
            )
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return tuple(np.zeros(0, np.int64) for _ in range(4))
        return tuple(np.concatenate(column) for column in zip(*self.parts, strict=True))


def build_tables(
    entities: pa.Table,
    feature_events: pa.Table,
    all_events: pa.Table,
    n_clusters: int = 16,
    factors: int = 32,
    seed: int = 0,
    text: bool = False,
) -> FeatureTables:
    """The tables from a log held in memory (`tables_from` with the whole window as one batch)."""
    v = Vocabularies.of(entities, *log_values(all_events))
    stats = WindowStatistics(v)
    stats.add(feature_events)
    clicks = ClickLog(v)
    clicks.add(all_events)
    return tables_from(entities, v, stats, clicks, n_clusters, factors, seed, text)


def tables_from(
    entities: pa.Table,
    v: Vocabularies,
    stats: WindowStatistics,
    clicks: ClickLog,
    n_clusters: int = 16,
    factors: int = 32,
    seed: int = 0,
    text: bool = False,
) -> FeatureTables:
    from sklearn.cluster import KMeans  # training-only dependencies

    ent_ids, genres, countries, user_ids = v.entity_ids, v.genres, v.countries, v.user_ids
    E1, U1 = len(ent_ids), len(user_ids)
    kind = np.zeros(E1, np.int64)
    kind[1:] = [KINDS.index(k) + 1 if k in KINDS else 0 for k in entities.column("kind").to_pylist()]
    genre_ids = np.zeros((E1, 3), np.int64)
    genre_hot = np.zeros((E1, len(genres)), bool)
    avail = np.zeros((E1, len(countries)), bool)
    avail[:, 0] = True
    for i, (gs, cs) in enumerate(
        zip(entities.column("genres").to_pylist(), entities.column("countries").to_pylist(), strict=True), 1
    ):
        ids = [v.gidx[g] for g in gs]
        genre_ids[i, : min(3, len(ids))] = ids[:3]
        genre_hot[i, ids] = True
        avail[i, [v.cidx[c] for c in cs]] = True
    year = np.zeros(E1, np.float32)
    year[1:] = entities.column("release_year").to_numpy()

    pop = np.log1p(stats.pop).astype(np.float32)
    queries, keys, qe_clicks, qe_impr, ctr_prior = stats.query_statistics()
    co = np.concatenate(stats.co_keys) if stats.co_keys else np.zeros(0, np.int64)
    co_keys, co_clicks = np.unique(co, return_counts=True)

    # Users: clusters and factors from the feature window's clicks.
    cu = np.concatenate(stats.click_users) if stats.click_users else np.zeros(0, np.int64)
    ce = np.concatenate(stats.click_entities) if stats.click_entities else np.zeros(0, np.int64)
    engagement = np.zeros((U1, len(genres)), np.float32)
    np.add.at(engagement, cu, genre_hot[ce].astype(np.float32))
    active = engagement.sum(1) > 0
    active[0] = False  # anonymous engagement says nothing about a cluster
    user_cluster = np.zeros(U1, np.int64)
    k = min(n_clusters, max(1, int(active.sum())))
    vectors = engagement[active] / engagement[active].sum(1, keepdims=True)
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(vectors)
    user_cluster[active] = km.labels_ + 1
    favourites = np.zeros((k + 1, FAVOURITES), np.int64)
    fav_counts = np.zeros((k + 1, E1))
    np.add.at(fav_counts, (user_cluster[cu], ce), 1.0)
    fav_counts[:, 0] = 0
    for cl in range(k + 1):
        top = np.argsort(-fav_counts[cl])[:FAVOURITES]
        top = top[fav_counts[cl, top] > 0]
        favourites[cl, : top.size] = top
    user_factors, item_factors = _als(cu, ce, U1, E1, factors, seed)
    user_factors[0] = 0.0

    hist_ptr, hist_items, hist_kinds = history_snapshot(*clicks.arrays(), U1)
    text_vec, projection = _text_table(ent_ids, entities, text)
    return FeatureTables(
        entity_ids=ent_ids,
        titles=[""] + entities.column("title").to_pylist(),
        kind=kind,
        genre_ids=genre_ids,
        genre_hot=genre_hot,
        year=year,
        countries=countries,
        genres=genres,
        avail=avail,
        pop=pop,
        queries=queries,
        qe_keys=keys.astype(np.int64),
        qe_clicks=qe_clicks,
        qe_impressions=qe_impr,
        ctr_prior=ctr_prior,
        co_keys=co_keys.astype(np.int64),
        co_clicks=co_clicks.astype(np.float32),
        user_ids=user_ids,
        user_cluster=user_cluster,
        n_clusters=k,
        user_factors=user_factors,
        item_factors=item_factors,
        history_ptr=hist_ptr,
        history_items=hist_items,
        history_kinds=hist_kinds,
        cluster_favourites=favourites,
        entity_table=entities,
        text_vec=text_vec,
        text_projection=projection,
    )


def _text_table(ent_ids: list[str], entities: pa.Table, text: bool) -> tuple[np.ndarray, TextProjection | None]:
    if not text:
        return np.zeros((len(ent_ids), TEXT_DIM), np.float32), None
    from model_export.text_embeddings import text_table

    return text_table([""] + entities.column("title").to_pylist())


def _als(users: np.ndarray, items: np.ndarray, U1: int, E1: int, factors: int, seed: int):
    """Implicit-feedback ALS (the `implicit` library) on feature-window clicks."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(U1, E1))
    matrix.sum_duplicates()
    model = AlternatingLeastSquares(factors=factors, iterations=12, regularization=0.05, random_state=seed)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit runs its own threads; nested BLAS threads slow it down
        model.fit(matrix, show_progress=False)
    uf = np.asarray(model.user_factors, np.float32)
    itf = np.asarray(model.item_factors, np.float32)
    uf[np.asarray(matrix.sum(1)).ravel() == 0] = 0
    itf[np.asarray(matrix.sum(0)).ravel() == 0] = 0
    return uf, itf


def history_snapshot(u: np.ndarray, ts: np.ndarray, e: np.ndarray, k: np.ndarray, U1: int):
    """Each user's last HISTORY_LENGTH clicked entities (most recent first) and their kinds, as CSR arrays;
    clicks at the same time keep the log's order."""
    order = np.argsort(-ts, kind="stable")
    u, e, k = u[order], e[order], k[order]
    order = np.argsort(u, kind="stable")
    u, e, k = u[order], e[order], k[order]
    start = np.searchsorted(u, np.arange(U1))
    rank = np.arange(len(u)) - start[u]
    keep = rank < HISTORY_LENGTH
    u, e, k = u[keep], e[keep], k[keep]
    ptr = np.zeros(U1 + 1, np.int64)
    ptr[1:] = np.cumsum(np.bincount(u, minlength=U1))
    return ptr, e, k
