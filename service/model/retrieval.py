"""Candidate retrieval when a request brings no candidates; only entities available in the country.

- search: the title index (token prefixes, one-edit typos), most popular first when there are many; then,
  from the third character, the facet index (genre names and catalogue tags; exact prefixes), a quarter of
  the limit kept for it when both find many;
  then, when words find nothing, the semantic neighbours of the query (the bundle's MiniLM encoder, an exact
  dot product over the catalogue's title vectors; bundles built with text features only). Only then: the
  model learned search from logs of word matches, so it cannot be trusted to rank a near meaning below
  an exact title, and a search box that answers "nebulon harv" with its one title is what users expect;
  one that answers "space pirates" with nothing is what they complain about;
- prequery: popular in the country, plus favourites of the user's cluster, plus the newest entities
  added at run time (no engagement yet, so the model, not popularity, decides whether they show);
- more_like_this: co-engaged neighbours, titles sharing words (franchises), popular same-genre titles;
- with personalization `full`, `related` adds what relates to the user's live engagements (the session).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from unirank.core.tables import FeatureTables
from unirank.core.vocab import Task


def _unique_in_order(parts: list[np.ndarray]) -> np.ndarray:
    merged = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    _, first = np.unique(merged, return_index=True)
    return merged[np.sort(first)]


FRESH = 50  # newest runtime-added entities considered for prequery
SESSION_PER_SOURCE = 10  # related titles taken per recent engagement (co-engaged, then same franchise)
FACET_MIN_CHARS = 3  # genre names and tags are searched from the third character on
SEMANTIC_MIN_CHARS = 4  # shorter queries are unfinished words: their embedding means little
SEMANTIC_NEIGHBOURS = 50
QUERY_VECTORS_CACHED = 4096


class Retriever:
    def __init__(
        self,
        tables: FeatureTables,
        limit: int = 200,
        embed_query: Callable[[str], np.ndarray] | None = None,
    ):
        """embed_query: a normalised query -> its vector in the space of `tables.text_vec` (None: no
        semantic retrieval)."""
        self.tables = tables
        self.limit = limit
        self.embed_query = embed_query
        # keystrokes repeat: the last queries' vectors are kept
        self._query_vector = lru_cache(QUERY_VECTORS_CACHED)(embed_query) if embed_query is not None else None
        t = tables
        C = len(t.countries)
        self.country_top = [self._top(np.flatnonzero(t.avail[:, c]), t.pop[:, c], limit) for c in range(C)]
        self.genre_top = [
            self._top(np.flatnonzero(t.genre_hot[:, g]), t.pop[:, 0], limit) for g in range(len(t.genres))
        ]
        e1 = t.n_entities + 1
        src, tgt = np.divmod(t.co_keys, e1)
        order = np.lexsort((-t.co_clicks, src))
        src, tgt = src[order], tgt[order]
        bounds = np.searchsorted(src, np.arange(e1 + 1))
        self.co_neighbours = [tgt[bounds[i] : bounds[i + 1]][:limit] for i in range(e1)]
        self.fresh: deque[int] = deque(maxlen=FRESH)

    def add_fresh(self, indices) -> None:
        """Entities added at run time, newest last."""
        for idx in indices:
            if idx in self.fresh:
                self.fresh.remove(idx)
            self.fresh.append(idx)

    @staticmethod
    def _top(candidates: np.ndarray, pop: np.ndarray, n: int) -> np.ndarray:
        candidates = candidates[candidates > 0]
        return candidates[np.argsort(-pop[candidates], kind="stable")[:n]]

    def _available(self, cand: np.ndarray, country: int) -> np.ndarray:
        return cand[self.tables.avail[cand, country]]

    def candidates(self, ctx) -> np.ndarray:
        """The candidates of a request that brings none (a `service.model.context.RequestContext`)."""
        task = ctx.unified.task
        if task == Task.SEARCH:
            return self.search(ctx.unified.query, ctx.country)
        if task == Task.PREQUERY:
            return self.prequery(ctx.country, ctx.cluster)
        return self.more_like_this(ctx.source, ctx.country)

    def search(self, query: str, country: int) -> np.ndarray:
        t = self.tables
        titles = self._available(t.title_index.lookup(query), country)
        if len(query) < FACET_MIN_CHARS:  # a letter or two prefixes every genre: title words alone
            return self._popular(titles, country, self.limit)
        facets = self._available(t.facet_index.lookup(query, typos=False), country)  # typos: titles only
        facets = facets[~np.isin(facets, titles, assume_unique=True)]
        n_facets = min(facets.size, max(self.limit - titles.size, self.limit // 4))
        found = np.concatenate(
            [self._popular(titles, country, self.limit - n_facets), self._popular(facets, country, n_facets)]
        )
        if found.size == 0 and self.embed_query is not None and len(query) >= SEMANTIC_MIN_CHARS:
            found = self.semantic(query, country, SEMANTIC_NEIGHBOURS)
        return found

    def _popular(self, cand: np.ndarray, country: int, n: int) -> np.ndarray:
        """The `n` most popular of `cand` in the country, most popular first (ties in index order; which of
        those tied at the cut are kept is fixed by the input, not by the index order)."""
        pop = -self.tables.pop[cand, country]
        if cand.size > n:  # partial selection first: a short prefix matches thousands
            keep = np.sort(np.argpartition(pop, n - 1)[:n]) if n > 0 else np.zeros(0, np.int64)
            cand, pop = cand[keep], pop[keep]
        return cand[np.argsort(pop, kind="stable")]

    def semantic(self, query: str, country: int, n: int) -> np.ndarray:
        """The `n` entities available in the country whose title vectors are nearest the query's."""
        text = self.tables.text_vec
        scores = text @ np.asarray(self._query_vector(query), np.float32)
        scores[0] = -np.inf
        scores[~self.tables.avail[:, country]] = -np.inf
        scores[~text.any(1)] = -np.inf  # entities without a title vector
        n = min(n, int(np.isfinite(scores).sum()))
        if n <= 0:
            return np.zeros(0, np.int64)
        top = np.argpartition(-scores, n - 1)[:n]
        return top[np.argsort(-scores[top], kind="stable")].astype(np.int64)

    def prequery(self, country: int, cluster: int) -> np.ndarray:
        favourites = self.tables.cluster_favourites[cluster]
        parts = [self.country_top[country], favourites[favourites > 0]]
        cand = self._available(_unique_in_order(parts), country)[: self.limit + len(parts[1])]
        if not self.fresh:
            return cand
        fresh = np.fromiter(reversed(self.fresh), np.int64, len(self.fresh))
        return _unique_in_order([cand, self._available(fresh, country)])

    def related(self, engaged: np.ndarray, country: int, exclude: np.ndarray, sources: int = 5) -> np.ndarray:
        """Titles related to a user's latest engagements (most recent first): co-engaged neighbours and
        titles sharing words (same franchise) of up to `sources` distinct ones, interleaved so that the
        most recent engagements come first; available in the country, none of `exclude` or `engaged`."""
        recent = _unique_in_order([engaged])[:sources]
        per_source = [_unique_in_order(self._neighbours(e, SESSION_PER_SOURCE)) for e in recent.tolist()]
        if not per_source:
            return np.zeros(0, np.int64)
        width = max(len(p) for p in per_source)  # round robin: the first of each source, then the second...
        grid = np.zeros((len(per_source), width), np.int64)
        for row, p in zip(grid, per_source, strict=True):
            row[: len(p)] = p
        cand = _unique_in_order([grid.T.ravel()])
        cand = cand[(cand > 0) & ~np.isin(cand, exclude) & ~np.isin(cand, engaged)]
        return self._available(cand, country)

    def _neighbours(self, source: int, n_titles: int, n_co: int | None = None) -> list[np.ndarray]:
        """Co-engaged neighbours of `source` (none for an entity added at run time), then the titles
        sharing its title's words (a franchise)."""
        t = self.tables
        co = self.co_neighbours[source][:n_co] if source < len(self.co_neighbours) else np.zeros(0, np.int64)
        return [co, t.title_index.lookup(t.norm_titles[source])[:n_titles]]

    def more_like_this(self, source: int, country: int) -> np.ndarray:
        if source == 0:  # unknown source: nothing to be similar to, so the popular titles
            return self.country_top[country]
        t = self.tables
        parts = self._neighbours(source, 50)
        parts += [self.genre_top[g][:50] for g in np.flatnonzero(t.genre_hot[source])]
        cand = self._available(_unique_in_order(parts), country)
        cand = cand[cand != source]
        if cand.size < self.limit:
            extra = self.country_top[country]
            cand = _unique_in_order([cand, extra[extra != source]])
        return cand[: self.limit]
