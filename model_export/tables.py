"""Feature tables: vocabularies and statistics from the feature window, saved in the bundle.

Built once at training time (`FeatureTables.build`), written to `bundle/tables/`, and loaded by the
service (`FeatureTables.load`) with numpy and pyarrow only. Entity, country and user indices are
1-based; 0 is the unknown / cold-start bucket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model_export.lexical import TitleIndex
from model_export.text import normalize
from model_export.text_features import TEXT_DIM, TextProjection

HISTORY_LENGTH = 50
FAVOURITES = 100
KINDS = ("video", "game")


@dataclass
class FeatureTables:
    entity_ids: list[str]  # index -> id; [0] == ""
    titles: list[str]
    kind: np.ndarray  # (E+1,) 0 unknown, 1 video, 2 game
    genre_ids: np.ndarray  # (E+1, 3) genre vocabulary ids, 0 pad
    genre_hot: np.ndarray  # (E+1, G) bool
    year: np.ndarray  # (E+1,)
    countries: list[str]  # index -> code; [0] == "" (unknown)
    genres: list[str]  # index -> name; [0] == ""
    avail: np.ndarray  # (E+1, C+1) bool; column 0 (unknown country) is all True
    pop: np.ndarray  # (E+1, C+1) log1p clicks; column 0 global
    queries: list[str]  # query id -> normalised query
    qe_keys: np.ndarray  # sorted qid * (E+1) + entity
    qe_clicks: np.ndarray
    qe_impressions: np.ndarray
    ctr_prior: float
    co_keys: np.ndarray  # sorted source * (E+1) + target
    co_clicks: np.ndarray
    user_ids: list[str]  # index -> id; [0] == ""
    user_cluster: np.ndarray  # (U+1,) 0 cold start
    n_clusters: int
    user_factors: np.ndarray  # (U+1, F) float32
    item_factors: np.ndarray  # (E+1, F) float32
    history_ptr: np.ndarray  # (U+2,) CSR over history_items, per user index
    history_items: np.ndarray  # entity indices, most recent first
    history_kinds: np.ndarray  # per history item: event_kind(task, played), 0 unknown
    text_vec: np.ndarray  # (E+1, TEXT_DIM) title text features (zeros unless built with text=True)
    cluster_favourites: np.ndarray  # (K+1, FAVOURITES) entity indices, 0 pad
    entity_table: pa.Table
    text_projection: TextProjection | None = None  # embedding -> text_vec, for entities added at run time
    entity_index: dict[str, int] = field(init=False)
    country_index: dict[str, int] = field(init=False)
    query_index: dict[str, int] = field(init=False)
    user_index: dict[str, int] = field(init=False)
    norm_titles: list[str] = field(init=False)
    n_model_entities: int = field(init=False)  # entities the model was trained with; later ones were added at run time

    # per-entity arrays: one row per entity index, grown when entities are added at run time
    PER_ENTITY = ("kind", "genre_ids", "genre_hot", "year", "avail", "pop", "item_factors", "text_vec")

    def __post_init__(self) -> None:
        self.n_model_entities = len(self.entity_ids) - 1
        self.entity_index = {e: i for i, e in enumerate(self.entity_ids) if i}
        self.country_index = {c: i for i, c in enumerate(self.countries) if i}
        self.query_index = {q: i for i, q in enumerate(self.queries)}
        self.user_index = {u: i for i, u in enumerate(self.user_ids) if i}
        self.norm_titles = [normalize(t) for t in self.titles]
        self._title_index: TitleIndex | None = None

    @property
    def n_entities(self) -> int:
        return len(self.entity_ids) - 1

    @property
    def title_index(self) -> TitleIndex:
        if self._title_index is None:
            self._title_index = TitleIndex(self.norm_titles)
        return self._title_index

    def grow(self, n: int) -> None:
        """Appends n blank rows to every per-entity array (no statistics, zero factors) for entities added
        at run time; the caller fills them and registers the ids (service.catalog.RuntimeCatalog)."""
        for name in self.PER_ENTITY:
            array = getattr(self, name)
            setattr(self, name, np.concatenate([array, np.zeros((n, *array.shape[1:]), array.dtype)]))

    def title_of(self, entity_id: str) -> str | None:
        idx = self.entity_index.get(entity_id)
        return self.titles[idx] if idx else None

    def history_of(self, user_idx: int) -> np.ndarray:
        return self.history_items[self.history_ptr[user_idx] : self.history_ptr[user_idx + 1]]

    def history_kinds_of(self, user_idx: int) -> np.ndarray:
        return self.history_kinds[self.history_ptr[user_idx] : self.history_ptr[user_idx + 1]]

    # ---- building -------------------------------------------------------------------------------

    @classmethod
    def build(cls, entities: pa.Table, feature_events: pa.Table, all_events: pa.Table,
              n_clusters: int = 16, factors: int = 32, seed: int = 0, text: bool = False) -> FeatureTables:  # fmt: skip
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
        for i, (gs, cs) in enumerate(zip(entities.column("genres").to_pylist(), entities.column("countries").to_pylist()), 1):
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
        qnorm = np.array([normalize(q) if s else "" for q, s in zip(f.column("query").to_pylist(), is_search)], dtype=object)
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
        user_ids = [""] + sorted(set(all_events.column("user_id").unique().to_pylist()))
        uidx = {u: i for i, u in enumerate(user_ids) if i}
        U1 = len(user_ids)
        fu = np.array([uidx[u] for u in f.column("user_id").to_pylist()], np.int64)
        c = clicked > 0
        engagement = np.zeros((U1, len(genres)), np.float32)
        np.add.at(engagement, fu[c], genre_hot[tgt[c]].astype(np.float32))
        active = engagement.sum(1) > 0
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

        hist_ptr, hist_items, hist_kinds = _history_snapshot(all_events, uidx, eidx, U1)
        text_vec, projection = _text_table(ent_ids, entities, text)
        return cls(
            entity_ids=ent_ids, titles=[""] + entities.column("title").to_pylist(), kind=kind,
            genre_ids=genre_ids, genre_hot=genre_hot, year=year, countries=countries, genres=genres,
            avail=avail, pop=pop, queries=queries, qe_keys=keys.astype(np.int64), qe_clicks=qe_clicks,
            qe_impressions=qe_impr, ctr_prior=ctr_prior, co_keys=co_keys.astype(np.int64),
            co_clicks=co_clicks.astype(np.float32), user_ids=user_ids, user_cluster=user_cluster,
            n_clusters=k, user_factors=user_factors, item_factors=item_factors, history_ptr=hist_ptr,
            history_items=hist_items, history_kinds=hist_kinds, cluster_favourites=favourites, entity_table=entities,
            text_vec=text_vec, text_projection=projection,
        )  # fmt: skip

    # ---- persistence ----------------------------------------------------------------------------

    _ARRAYS = ("kind", "genre_ids", "genre_hot", "year", "avail", "pop", "qe_keys", "qe_clicks",
               "qe_impressions", "co_keys", "co_clicks", "user_cluster", "user_factors",
               "item_factors", "history_ptr", "history_items", "history_kinds", "cluster_favourites", "text_vec")  # fmt: skip

    def save(self, directory: Path | str) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in self._ARRAYS}
        if self.text_projection is not None:
            p = self.text_projection
            arrays |= {"text_mean": p.mean, "text_components": p.components, "text_scale": np.float32(p.scale)}
        np.savez(d / "arrays.npz", **arrays)
        pq.write_table(self.entity_table, d / "entities.parquet")
        pq.write_table(pa.table({"user_id": self.user_ids[1:], "cluster": self.user_cluster[1:]}), d / "users.parquet")
        meta = {"countries": self.countries, "genres": self.genres, "queries": self.queries,
                "ctr_prior": self.ctr_prior, "n_clusters": self.n_clusters}  # fmt: skip
        (d / "vocab.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path | str) -> FeatureTables:
        d = Path(directory)
        with np.load(d / "arrays.npz") as z:
            arrays = {k: z[k] for k in cls._ARRAYS if k in z}
            projection = TextProjection(z["text_mean"], z["text_components"], float(z["text_scale"])) if "text_mean" in z else None
        arrays.setdefault("history_kinds", np.zeros_like(arrays["history_items"]))  # bundles from before kinds
        arrays.setdefault("text_vec", np.zeros((len(arrays["kind"]), TEXT_DIM), np.float32))  # ... and text
        meta = json.loads((d / "vocab.json").read_text())
        entities = pq.read_table(d / "entities.parquet")
        users = pq.read_table(d / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
        return cls(
            entity_ids=[""] + entities.column("entity_id").to_pylist(),
            titles=[""] + entities.column("title").to_pylist(),
            countries=meta["countries"], genres=meta["genres"], queries=meta["queries"],
            ctr_prior=meta["ctr_prior"], n_clusters=meta["n_clusters"], user_ids=[""] + users,
            entity_table=entities, text_projection=projection, **arrays,
        )  # fmt: skip


def _text_table(ent_ids: list[str], entities: pa.Table, text: bool) -> tuple[np.ndarray, TextProjection | None]:
    if not text:
        return np.zeros((len(ent_ids), TEXT_DIM), np.float32), None
    from model_export.text_features import text_table  # training-only dependencies

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
    u = np.array([uidx[x] for x in clicks.column("user_id").to_pylist()], np.int64)
    e = np.array([eidx.get(x, 0) for x in clicks.column("target_entity_id").to_pylist()], np.int64)
    k = event_kinds(clicks.column("task").to_numpy(zero_copy_only=False), clicks.column("played").to_numpy(zero_copy_only=False))
    order = np.argsort(u, kind="stable")
    u, e, k = u[order], e[order], k[order]
    start = np.searchsorted(u, np.arange(U1))
    rank = np.arange(len(u)) - start[u]
    keep = rank < HISTORY_LENGTH
    u, e, k = u[keep], e[keep], k[keep]
    ptr = np.zeros(U1 + 1, np.int64)
    ptr[1:] = np.cumsum(np.bincount(u, minlength=U1))
    return ptr, e, k


HISTORY_KINDS = 5  # 0 unknown, then (search | recommendation) x (click | play)


def event_kind(task: str, played: bool) -> int:
    """Kind of a history event: where it came from (a search, or a recommendation surface) and how far
    it went (click, or play): 1 search-click, 2 search-play, 3 rec-click, 4 rec-play."""
    return (1 if task == "search" else 3) + bool(played)


def event_kinds(tasks, played) -> np.ndarray:
    """`event_kind` of each event of a log."""
    return np.fromiter(map(event_kind, tasks, played), np.int64, count=len(tasks))
