"""Building the feature tables of a bundle from the feature window (training only: scikit-learn's
k-means for the user clusters, `implicit`'s ALS for the collaborative factors, MiniLM for title text).

Contract: `build_tables(entities, feature_events, all_events)` returns the `FeatureTables` the
service loads; statistics come from `feature_events` only, vocabularies from the whole log.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirank.core.history import HISTORY_LENGTH, event_kinds
from unirank.core.tables import KINDS, FeatureTables
from unirank.core.text import normalize
from unirank.core.text_features import TEXT_DIM, TextProjection

FAVOURITES = 100  # entities kept per user cluster (prequery retrieval)


def build_tables(
    entities: pa.Table,
    feature_events: pa.Table,
    all_events: pa.Table,
    n_clusters: int = 16,
    factors: int = 32,
    seed: int = 0,
    text: bool = False,
) -> FeatureTables:
    from sklearn.cluster import KMeans  # training-only dependencies

    ent_ids = [""] + entities.column("entity_id").to_pylist()
    eidx = {e: i for i, e in enumerate(ent_ids) if i}
    E1 = len(ent_ids)
    genres = [""] + sorted({g for gs in entities.column("genres").to_pylist() for g in gs})
    gidx = {g: i for i, g in enumerate(genres) if i}
    countries = [""] + sorted(
        set(all_events.column("country").unique().to_pylist())
        | {c for cs in entities.column("countries").to_pylist() for c in cs}
    )
    cidx = {c: i for i, c in enumerate(countries) if i}
    kind = np.zeros(E1, np.int64)
    kind[1:] = [KINDS.index(k) + 1 if k in KINDS else 0 for k in entities.column("kind").to_pylist()]
    genre_ids = np.zeros((E1, 3), np.int64)
    genre_hot = np.zeros((E1, len(genres)), bool)
    avail = np.zeros((E1, len(countries)), bool)
    avail[:, 0] = True
    for i, (gs, cs) in enumerate(
        zip(entities.column("genres").to_pylist(), entities.column("countries").to_pylist(), strict=True), 1
    ):
        ids = [gidx[g] for g in gs]
        genre_ids[i, : min(3, len(ids))] = ids[:3]
        genre_hot[i, ids] = True
        avail[i, [cidx[c] for c in cs]] = True
    year = np.zeros(E1, np.float32)
    year[1:] = entities.column("release_year").to_numpy()

    f = feature_events
    tgt = np.array([eidx.get(e, 0) for e in f.column("target_entity_id").to_pylist()], np.int64)
    clicked = f.column("clicked").to_numpy(zero_copy_only=False).astype(np.int64)
    ctry = np.array([cidx.get(c, 0) for c in f.column("country").to_pylist()], np.int64)
    pop = np.zeros((E1, len(countries)), np.float64)
    np.add.at(pop[:, 0], tgt, clicked)
    np.add.at(pop, (tgt, ctry), clicked)
    pop = np.log1p(pop).astype(np.float32)

    # Query-entity statistics (search queries as typed, normalised).
    task = np.asarray(f.column("task").to_pylist(), dtype=object)
    is_search = task == "search"
    qnorm = np.array(
        [normalize(q) if s else "" for q, s in zip(f.column("query").to_pylist(), is_search, strict=True)], dtype=object
    )
    queries = [""] + sorted(set(qnorm[is_search]) - {""})
    qidx = {q: i for i, q in enumerate(queries)}
    qid = np.array([qidx.get(q, 0) for q in qnorm], np.int64)
    sel = is_search & (qid > 0)
    keys, inv = np.unique(qid[sel] * E1 + tgt[sel], return_inverse=True)
    qe_clicks = np.bincount(inv, weights=clicked[sel]).astype(np.float32)
    qe_impr = np.bincount(inv).astype(np.float32)
    ctr_prior = float(clicked[sel].mean()) if sel.any() else 0.1

    # Source-target co-engagement from more_like_this clicks.
    mlt = (task == "more_like_this") & (clicked > 0)
    src = np.array([eidx.get(e, 0) if e else 0 for e in f.column("source_entity_id").to_pylist()], np.int64)
    co_keys, co_clicks = np.unique(src[mlt] * E1 + tgt[mlt], return_counts=True)

    # Users: vocabulary over the whole log; clusters and factors from the feature window.
    # an empty user id is an anonymous visitor: the unknown user (index 0), never a user of its own
    user_ids = [""] + sorted(set(all_events.column("user_id").unique().to_pylist()) - {""})
    uidx = {u: i for i, u in enumerate(user_ids) if i}
    U1 = len(user_ids)
    fu = np.array([uidx.get(u, 0) for u in f.column("user_id").to_pylist()], np.int64)
    c = clicked > 0
    engagement = np.zeros((U1, len(genres)), np.float32)
    np.add.at(engagement, fu[c], genre_hot[tgt[c]].astype(np.float32))
    active = engagement.sum(1) > 0
    active[0] = False  # anonymous engagement says nothing about a cluster
    user_cluster = np.zeros(U1, np.int64)
    k = min(n_clusters, max(1, int(active.sum())))
    vectors = engagement[active] / engagement[active].sum(1, keepdims=True)
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(vectors)
    user_cluster[active] = km.labels_ + 1
    favourites = np.zeros((k + 1, FAVOURITES), np.int64)
    fav_counts = np.zeros((k + 1, E1))
    np.add.at(fav_counts, (user_cluster[fu[c]], tgt[c]), 1.0)
    fav_counts[:, 0] = 0
    for cl in range(k + 1):
        top = np.argsort(-fav_counts[cl])[:FAVOURITES]
        top = top[fav_counts[cl, top] > 0]
        favourites[cl, : top.size] = top
    user_factors, item_factors = _als(fu[c], tgt[c], U1, E1, factors, seed)
    user_factors[0] = 0.0

    hist_ptr, hist_items, hist_kinds = _history_snapshot(all_events, uidx, eidx, U1)
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


def _history_snapshot(events: pa.Table, uidx: dict, eidx: dict, U1: int):
    """Each user's last HISTORY_LENGTH clicked entities (most recent first) and their kinds, as CSR arrays."""
    clicks = events.filter(pc.field("clicked")).sort_by([("timestamp", "descending")])
    u = np.array([uidx.get(x, 0) for x in clicks.column("user_id").to_pylist()], np.int64)
    e = np.array([eidx.get(x, 0) for x in clicks.column("target_entity_id").to_pylist()], np.int64)
    k = event_kinds(
        clicks.column("task").to_numpy(zero_copy_only=False), clicks.column("played").to_numpy(zero_copy_only=False)
    )
    order = np.argsort(u, kind="stable")
    u, e, k = u[order], e[order], k[order]
    start = np.searchsorted(u, np.arange(U1))
    rank = np.arange(len(u)) - start[u]
    keep = rank < HISTORY_LENGTH
    u, e, k = u[keep], e[keep], k[keep]
    ptr = np.zeros(U1 + 1, np.int64)
    ptr[1:] = np.cumsum(np.bincount(u, minlength=U1))
    return ptr, e, k
