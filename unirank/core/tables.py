"""Feature tables: vocabularies and statistics of the feature window, as the bundle stores them.

Contract: `FeatureTables.load`/`save` read and write `bundle/tables/` with numpy and pyarrow only
(training builds them with `model_export.table_builder`). Entity, country and user indices are
1-based; 0 is the unknown / cold-start bucket. Indices above `n_model_entities` belong to entities
added at run time (`upsert_runtime_entities`): content features, no statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unirank.core.lexical import TextIndex
from unirank.core.text import normalize
from unirank.core.text_features import TEXT_DIM, TextProjection

KINDS = ("video", "game")


@dataclass(frozen=True)
class RuntimeEntity:
    """An entity added while the service runs: the catalog fields, and its text features when known."""

    entity_id: str
    title: str
    kind: str = "video"
    genres: tuple[str, ...] = ()
    release_year: float | None = None  # None: the catalog's median year
    countries: tuple[str, ...] | None = None  # None: available everywhere
    tags: tuple[str, ...] = ()  # catalogue tags: what search finds it by besides its title and genres
    text: np.ndarray | None = None  # (TEXT_DIM,) projected title embedding


def pack_genres(genre_hot: np.ndarray) -> np.ndarray:
    """(E, G) bool -> (E, ceil(G / 64)) uint64: each row's genres as bits (np.bitwise_count counts them)."""
    words = max(1, -(-genre_hot.shape[1] // 64))
    padded = np.zeros((len(genre_hot), words * 64), bool)
    padded[:, : genre_hot.shape[1]] = genre_hot
    return np.packbits(padded, axis=1, bitorder="little").view("<u8")


def facet_text(genres, tags) -> str:
    """The normalised text the facet index holds for an entity: its genre names, then its tags."""
    return " ".join(t for t in (normalize(x) for x in (*genres, *tags)) if t)


def year_feature(year: np.ndarray) -> np.ndarray:
    """The `release_year` feature of these years (the unknown entity, index 0, has 0 instead)."""
    return ((year - 2000.0) / 30.0).astype(np.float32)


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
    cluster_favourites: np.ndarray  # (K+1, favourites) entity indices, 0 pad
    entity_table: pa.Table
    text_projection: TextProjection | None = None  # embedding -> text_vec, for entities added at run time
    entity_index: dict[str, int] = field(init=False)
    country_index: dict[str, int] = field(init=False)
    query_index: dict[str, int] = field(init=False)
    user_index: dict[str, int] = field(init=False)
    norm_titles: list[str] = field(init=False)
    n_model_entities: int = field(init=False)  # entities the model was trained with; later ones were added at run time

    genre_bits: np.ndarray = field(init=False)  # (E+1, W) uint64: genre_hot packed, for Jaccard by popcount
    year_feature: np.ndarray = field(init=False)  # (E+1,) float32: the release_year feature (0 for index 0)

    # per-entity arrays: one row per entity index, grown when entities are added at run time
    PER_ENTITY = (
        "kind",
        "genre_ids",
        "genre_hot",
        "year",
        "avail",
        "pop",
        "item_factors",
        "text_vec",
        "genre_bits",
        "year_feature",
    )

    def __post_init__(self) -> None:
        self.genre_bits = pack_genres(self.genre_hot)
        self.year_feature = year_feature(self.year)
        self.year_feature[:1] = 0.0
        self.n_model_entities = len(self.entity_ids) - 1
        self.entity_index = {e: i for i, e in enumerate(self.entity_ids) if i}
        self.country_index = {c: i for i, c in enumerate(self.countries) if i}
        self.query_index = {q: i for i, q in enumerate(self.queries)}
        self.user_index = {u: i for i, u in enumerate(self.user_ids) if i}
        self.norm_titles = [normalize(t) for t in self.titles]
        self._genre_index = {g: i for i, g in enumerate(self.genres) if i}
        self._title_index: TextIndex | None = None
        self._facet_index: TextIndex | None = None
        self._facet_texts: list[str] | None = None

    @property
    def n_entities(self) -> int:
        return len(self.entity_ids) - 1

    @property
    def title_index(self) -> TextIndex:
        if self._title_index is None:
            self._title_index = TextIndex(self.norm_titles)
        return self._title_index

    @property
    def facet_texts(self) -> list[str]:
        """Each entity's genre names and catalogue tags (the entities table's optional `tags`), normalised."""
        if self._facet_texts is None:
            tags = (
                self.entity_table.column("tags").to_pylist()
                if "tags" in self.entity_table.column_names
                else [None] * self.n_model_entities
            )
            self._facet_texts = [""] + [facet_text(self.genres_of(i), t or ()) for i, t in enumerate(tags, 1)]
            self._facet_texts += [""] * (self.n_entities - self.n_model_entities)
        return self._facet_texts

    @property
    def facet_index(self) -> TextIndex:
        """The index of `facet_texts`: what search finds besides title words."""
        if self._facet_index is None:
            self._facet_index = TextIndex(self.facet_texts)
        return self._facet_index

    def upsert_runtime_entities(self, entities: list[RuntimeEntity]) -> list[int]:
        """Adds entities beyond the trained catalog, or replaces earlier runtime ones; returns their
        indices. Trained entities are not touched (the caller refuses them). Names the vocabularies do
        not know (genres, countries) are dropped."""
        self.facet_index  # noqa: B018 (built from the trained catalogue before it grows)
        new_ids = [e.entity_id for e in entities if e.entity_id not in self.entity_index]
        if new_ids:
            self._grow(len(new_ids))
            self.entity_ids += new_ids
            self.titles += [""] * len(new_ids)
            self.norm_titles += [""] * len(new_ids)
            self.facet_texts.extend([""] * len(new_ids))
            self.entity_index.update({e: len(self.entity_ids) - len(new_ids) + k for k, e in enumerate(new_ids)})
        indices = []
        for entity in entities:
            i = self.entity_index[entity.entity_id]
            if i <= self.n_model_entities:
                raise ValueError(f"{entity.entity_id} is a trained entity")
            if self.norm_titles[i]:  # replaced: its old title leaves the index
                self.title_index.remove(i, self.norm_titles[i])
            self._fill_runtime_row(i, entity)
            self.titles[i], self.norm_titles[i] = entity.title, normalize(entity.title)
            self.title_index.add(i, self.norm_titles[i])
            self.facet_index.remove(i, self.facet_texts[i])
            self.facet_texts[i] = facet_text(self.genres_of(i), entity.tags)
            self.facet_index.add(i, self.facet_texts[i])
            indices.append(i)
        return indices

    def genres_of(self, i: int) -> list[str]:
        return [self.genres[g] for g in np.flatnonzero(self.genre_hot[i])]

    def genre_indices(self, names) -> list[int]:
        return [g for g in (self._genre_index.get(n, 0) for n in names) if g]

    @property
    def median_year(self) -> float:
        years = self.year[1 : self.n_model_entities + 1]
        return float(np.median(years)) if years.size else 2000.0

    def _grow(self, n: int) -> None:
        for name in self.PER_ENTITY:
            array = getattr(self, name)
            setattr(self, name, np.concatenate([array, np.zeros((n, *array.shape[1:]), array.dtype)]))

    def _fill_runtime_row(self, i: int, entity: RuntimeEntity) -> None:
        genres = self.genre_indices(entity.genres)
        self.kind[i] = KINDS.index(entity.kind) + 1 if entity.kind in KINDS else 0
        self.genre_ids[i] = 0
        self.genre_ids[i, : min(3, len(genres))] = genres[:3]
        self.genre_hot[i] = False
        self.genre_hot[i, genres] = True
        self.genre_bits[i] = pack_genres(self.genre_hot[i : i + 1])[0]
        self.year[i] = entity.release_year if entity.release_year is not None else self.median_year
        self.year_feature[i] = year_feature(self.year[i : i + 1])[0]
        self.avail[i] = entity.countries is None
        self.avail[i, 0] = True
        known = [self.country_index.get(c.upper(), 0) for c in entity.countries or ()]
        self.avail[i, [c for c in known if c]] = True
        self.pop[i] = 0.0
        self.item_factors[i] = 0.0
        self.text_vec[i] = 0.0 if entity.text is None else entity.text

    def title_of(self, entity_id: str) -> str | None:
        idx = self.entity_index.get(entity_id)
        return self.titles[idx] if idx else None

    def history_of(self, user_idx: int) -> np.ndarray:
        return self.history_items[self.history_ptr[user_idx] : self.history_ptr[user_idx + 1]]

    def history_kinds_of(self, user_idx: int) -> np.ndarray:
        return self.history_kinds[self.history_ptr[user_idx] : self.history_ptr[user_idx + 1]]

    # ---- persistence ----------------------------------------------------------------------------

    _ARRAYS = (
        "kind",
        "genre_ids",
        "genre_hot",
        "year",
        "avail",
        "pop",
        "qe_keys",
        "qe_clicks",
        "qe_impressions",
        "co_keys",
        "co_clicks",
        "user_cluster",
        "user_factors",
        "item_factors",
        "history_ptr",
        "history_items",
        "history_kinds",
        "cluster_favourites",
        "text_vec",
    )

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
        meta = {
            "countries": self.countries,
            "genres": self.genres,
            "queries": self.queries,
            "ctr_prior": self.ctr_prior,
            "n_clusters": self.n_clusters,
        }
        (d / "vocab.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path | str) -> FeatureTables:
        d = Path(directory)
        with np.load(d / "arrays.npz") as z:
            arrays = {k: z[k] for k in cls._ARRAYS if k in z}
            projection = (
                TextProjection(z["text_mean"], z["text_components"], float(z["text_scale"]))
                if "text_mean" in z
                else None
            )
        arrays.setdefault("history_kinds", np.zeros_like(arrays["history_items"]))  # bundles from before kinds
        arrays.setdefault("text_vec", np.zeros((len(arrays["kind"]), TEXT_DIM), np.float32))  # ... and text
        meta = json.loads((d / "vocab.json").read_text())
        entities = pq.read_table(d / "entities.parquet")
        users = pq.read_table(d / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
        return cls(
            entity_ids=[""] + entities.column("entity_id").to_pylist(),
            titles=[""] + entities.column("title").to_pylist(),
            countries=meta["countries"],
            genres=meta["genres"],
            queries=meta["queries"],
            ctr_prior=meta["ctr_prior"],
            n_clusters=meta["n_clusters"],
            user_ids=[""] + users,
            entity_table=entities,
            text_projection=projection,
            **arrays,
        )
