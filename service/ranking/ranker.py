"""The /rank flow: context -> (cache | retrieval) -> features -> one onnxruntime call -> top k.

Contract: `Ranker.rank(request)` answers one parsed `RankRequest` with a `RankAnswer` (the caller's
`Timings` hold the stages), or raises `Unsupported` (personalization above the bundle's). Per personalization:
- explicit candidates: scored as given (cache "bypass");
- none/cluster: the ranked list depends only on (model version, runtime catalog generation, task,
  country, cluster, normalised query or source, k), so it is cached in Redis with a TTL (single flight);
- full: the cluster-level candidates (stage one) are cached, then re-scored with the user's features
  and live history (stage two), so the keystroke path still skips retrieval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cache
from typing import NamedTuple

import numpy as np
import orjson
import redis.asyncio as aioredis

from service.core.answer import RankAnswer
from service.core.errors import DeadlineExceeded, ModelFailure, Unsupported, problem, store_failures_tolerated
from service.core.schemas import RankRequest
from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from service.model.context import PersonalizationError, RequestContext, build_request_context
from service.model.features import History, ScoringJob
from service.ops.metrics import CACHE, CANDIDATES, STAGE_LATENCY, buffered, buffered_counter
from service.store.cache import RankCache
from service.store.events import recent_history
from unirank.core.context import blend_personalization
from unirank.core.lexical import match_features_many
from unirank.core.vocab import Level, Task


@dataclass
class Timings:
    """Seconds spent per stage of one request; `finish` records them once, `header` formats them."""

    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - since)
        return now

    def record(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def finish(self, observe: bool = True) -> None:
        self.stages["total"] = time.perf_counter() - self.started
        if observe:
            for stage, seconds in self.stages.items():
                _stage_histogram(stage).observe(seconds)

    def header(self) -> str:
        """The Server-Timing header value."""
        return _timing_format(tuple(self.stages)) % tuple([seconds * 1000 for seconds in self.stages.values()])


@cache
def _timing_format(stages: tuple[str, ...]) -> str:
    """One %-format per sequence of stages (a handful exist): formatting the numbers is then one operation."""
    return ", ".join(f"{stage};dur=%.3f" for stage in stages)


@cache
def _stage_histogram(stage: str):
    return buffered(STAGE_LATENCY.labels(stage=stage))  # labels() costs microseconds: once per stage


@cache
def _candidates_histogram(task: str):
    return buffered(CANDIDATES.labels(task=task))


def with_available(items: bytes, available: int) -> bytes:
    """A cached ranking: the encoded items, then how many candidates they were chosen from."""
    return items + b"|" + str(available).encode()


def split_available(value: bytes) -> tuple[bytes, int | None]:
    """`with_available` undone (the count is None for a value cached without it)."""
    items, _, available = value.rpartition(b"|")  # the count has no "|"; entity ids may
    return (items, int(available)) if items and available.isdigit() else (value, None)


def top_k(scores: np.ndarray, ids: list[str], k: int) -> bytes:
    """Items by score descending, ties broken by entity id, encoded as a JSON array."""
    n = len(scores)
    if k < n:
        threshold = np.partition(scores, n - k)[n - k]
        keep = np.flatnonzero(scores >= threshold)  # k, or a few more when scores tie
        pairs = zip(scores[keep].tolist(), keep.tolist(), strict=True)  # only those become Python floats
    else:
        pairs = zip(scores.tolist(), range(n), strict=True)
    ranked = sorted(pairs, key=lambda p: (-p[0], ids[p[1]]))[:k]
    return orjson.dumps([{"entity_id": ids[i], "score": v} for v, i in ranked])


class _Ranked(NamedTuple):
    items: bytes  # the ranked items as a JSON array
    cache: str  # how the cache was used: hit, miss or bypass
    available: int | None  # how many candidates they came from (None: cached without the count)
    unknown: list[str] | None  # the request's candidates the model does not know (None: not looked up yet)
    fresh_until: float | None = None  # a cached ranking's expiry in this worker's memory (`RankAnswer`)


class Ranker:
    def __init__(
        self,
        bundle: LoadedBundle,
        cache: RankCache,
        redis: aioredis.Redis,
        settings: Settings,
        name: str = "default",
        observe: bool = True,
    ):
        """name: the model's name in responses and metrics; observe: record metrics (off for shadow scoring)."""
        self.bundle = bundle
        self.cache = cache
        self.redis = redis
        self.settings = settings
        self.name = name
        self.observe = observe
        results = ("hit", "miss", "bypass")
        self._cache_results = {r: buffered_counter(CACHE.labels(result=r, model=name)) for r in results}

    def count_cache(self, result: str) -> None:
        """One cache look-up's result (hit, miss or bypass) made elsewhere (a repeated request's)."""
        if self.observe:
            self._cache_results[result].inc()

    def context(self, request: RankRequest) -> RequestContext:
        try:
            ctx = build_request_context(request, self.bundle.tables, self.bundle.level, self.bundle.impute)
        except PersonalizationError as exc:
            raise Unsupported("personalization", str(exc)) from exc
        if request.personalization_weight is not None and ctx.level != Level.FULL:
            raise Unsupported(
                "personalization_weight", f"applies to personalization 'full' only (this request is '{ctx.level}')"
            )
        return ctx

    async def rank(
        self,
        request: RankRequest,
        timings: Timings | None = None,
        deadline: float = float("inf"),
    ) -> RankAnswer:
        """`timings`: the request's, from when it arrived (the caller may have recorded its parsing).
        Raises DeadlineExceeded when `deadline` (a perf_counter time) passes before the scoring starts,
        ModelFailure when the model call fails; a cached answer is served whatever the deadline."""
        timings = timings or Timings()
        at = time.perf_counter()
        ctx = self.context(request)
        timings.add("context", at)
        with self.bundle.request_scope():
            ranked = await self._items(request, ctx, timings, deadline)
        at = time.perf_counter()
        if self.observe:
            self._cache_results[ranked.cache].inc()
        answer = self._answer(request, ctx, ranked)
        timings.add("encode", at)
        timings.finish(self.observe)
        return answer

    def _answer(
        self, request: RankRequest, ctx: RequestContext, ranked: _Ranked, degraded_reason: str | None = None
    ) -> RankAnswer:
        items, available, unknown = ranked.items, ranked.available, ranked.unknown
        return RankAnswer(
            items=items,
            task=ctx.unified.task,
            cache=ranked.cache,
            model=self.name,
            model_version=self.bundle.version,
            level=ctx.level,
            shown=self.bundle.entities.decorate(items) if request.display else None,
            returned=None if available is None else min(request.k, available),
            available=available,
            warnings=self.warnings(request, ctx, unknown) if ctx.unknown or unknown or degraded_reason else [],
            context=ctx.explain() if request.explain else None,
            degraded_reason=degraded_reason,
            fresh_until=ranked.fresh_until,
        )

    def warnings(self, request: RankRequest, ctx: RequestContext, unknown: list[str] | None = None) -> list[dict]:
        """What the model did not know about the request (it answered anyway), each naming its field;
        `unknown`: the request's candidates the model does not know, when the caller found them already."""
        out = []
        u = ctx.unified
        if u.task == Task.SEARCH and not u.query:
            message = "no letter or digit to search by: nothing matches"
            out.append(problem(message, "query", "empty"))
        if u.source_entity_id and not ctx.source:
            instead = "; the popular titles in the country instead" if u.task == Task.MORE_LIKE_THIS else ""
            out.append(problem(f"unknown entity '{u.source_entity_id}'{instead}", "source_entity_id", "unknown"))
        if u.user_id and not ctx.user and ctx.level != Level.NONE:
            message = f"user '{u.user_id}' is not among the model's users: ranked as a new user"
            out.append(
                problem(message + (" with their live history" if ctx.level == Level.FULL else ""), "user_id", "unknown")
            )
        if not ctx.country:
            message = f"country '{u.country}' is not among the model's countries: ranked as an unknown country"
            out.append(problem(message, "country", "unknown"))
        if request.candidates is not None:
            index = self.bundle.tables.entity_index
            missing = unknown if unknown is not None else [c for c in request.candidates if c not in index]
            if missing:
                message = f"{len(missing)} candidate(s) unknown to the model, scored as unknown entities"
                out.append(problem(message, "candidates", "unknown") | {"entity_ids": missing[:20]})
        return out

    async def candidate_ids(self, request: RankRequest) -> list[str]:
        """The candidates this model would rank for the request: the given ones, or its retrieval."""
        ctx = self.context(request)
        if request.candidates is not None:
            return self._explicit_candidates(request, ctx)[0]
        ids = self.bundle.tables.entity_ids
        return [ids[i] for i in self.bundle.retriever.candidates(ctx).tolist()]

    async def rank_pool(
        self, request: RankRequest, pool: list[str], timings: Timings, deadline: float = float("inf")
    ) -> list[tuple[str, float]]:
        """Every id of `pool` with this model's score for the request, best first (ties by id)."""
        ctx = self.context(request)
        candidates = self.bundle.features.encoder.entity_indices(pool)
        weight = request.personalization_weight
        with self.bundle.request_scope():
            history = await self._history(ctx, timings) if ctx.level == Level.FULL else None
            scores = (await self._blended(ctx, candidates, history, timings, deadline, weight)).tolist()
        return sorted(zip(pool, scores, strict=True), key=lambda p: (-p[1], p[0]))

    async def _items(
        self, request: RankRequest, ctx: RequestContext, timings: Timings, deadline: float = float("inf")
    ) -> _Ranked:
        if request.candidates is not None:
            ids, candidates = self._explicit_candidates(request, ctx)
            history = await self._history(ctx, timings) if ctx.level == Level.FULL else None
            weight = request.personalization_weight
            items = await self._score(ctx, candidates, ids, request.k, history, timings, deadline, weight)
            return _Ranked(items, "bypass", len(ids), [ids[i] for i in np.flatnonzero(candidates == 0).tolist()])
        if ctx.unified.task == Task.SEARCH and not ctx.unified.query:  # nothing to match titles with
            return _Ranked(b"[]", "bypass", 0, [])
        if ctx.level != Level.FULL:
            key = ctx.cache_key(self.bundle.cache_version, request.k)
            started = time.perf_counter()
            value = await self.cache.get(key)
            timings.add("cache", started)
            status = "hit"
            if value is None:
                value = await self.cache.single_flight(
                    key, lambda: self._compute_and_store(ctx, request.k, key, timings, deadline)
                )
                status = "miss"
            items, available = split_available(value)
            return _Ranked(items, status, available, [], self.cache.local_expiry(key))
        candidates, status = await self._stage_one(ctx, timings, deadline)
        history = await self._history(ctx, timings)
        candidates = self.with_session(ctx, candidates, history)
        ids = [self.bundle.tables.entity_ids[i] for i in candidates.tolist()]
        weight = request.personalization_weight
        items = await self._score(ctx, candidates, ids, request.k, history, timings, deadline, weight)
        return _Ranked(items, status, len(ids), [])

    def with_session(self, ctx: RequestContext, candidates: np.ndarray, history: History) -> np.ndarray:
        """The cluster's candidates plus titles related to the user's live (this session's) engagements,
        so that what they just did can move the ranking, not only re-order the cluster's list."""
        n = self.settings.session_candidates
        if n <= 0 or history.live == 0:
            return candidates
        related = self.bundle.retriever.related(history.entities[: history.live], ctx.country, exclude=candidates)
        return np.concatenate([candidates, related[:n]]) if related.size else candidates

    def _explicit_candidates(self, request: RankRequest, ctx: RequestContext) -> tuple[list[str], np.ndarray]:
        """The request's candidates once each (the source entity left out of more-like-this), and their
        entity indices."""
        source = ctx.unified.source_entity_id if ctx.unified.task == Task.MORE_LIKE_THIS else None
        return self.bundle.features.encoder.unique_entity_indices(request.candidates, source)

    def _retrieve(self, ctx: RequestContext, timings: Timings) -> np.ndarray:
        started = time.perf_counter()
        candidates = self.bundle.retriever.candidates(ctx)
        timings.add("retrieval", started)
        return candidates

    async def _score_array(
        self,
        ctx: RequestContext,
        candidates: np.ndarray,
        history: History | None,
        timings: Timings,
        deadline: float = float("inf"),
    ) -> np.ndarray:
        started = time.perf_counter()
        if started > deadline:
            raise DeadlineExceeded()
        if self.observe:
            _candidates_histogram(ctx.unified.task).observe(len(candidates))
        if len(candidates) == 0:
            return np.zeros(0, np.float32)
        job = ScoringJob(ctx, candidates, history)
        try:
            scores = await self.bundle.score(job)
        except Exception as exc:  # a model that cannot score: the caller ranks without it
            raise ModelFailure(f"{type(exc).__name__}: {exc}") from exc
        waited = time.perf_counter() - started - job.features_s - job.inference_s
        if self.bundle.batcher is not None:
            timings.record("batch", waited)  # waiting for the batch to start (and for its other requests)
        timings.record("features", job.features_s)
        timings.record("inference", job.inference_s)
        return scores

    async def _blended(
        self,
        ctx: RequestContext,
        candidates: np.ndarray,
        history: History | None,
        timings: Timings,
        deadline: float,
        weight: float | None,
    ) -> np.ndarray:
        """Scores at the request's level; with a personalization weight below 1 (level 'full'), blended
        with the same candidates' cluster-level scores (a second model call)."""
        scores = await self._score_array(ctx, candidates, history, timings, deadline)
        if weight is None or weight >= 1.0 or len(candidates) == 0:
            return scores
        cluster = await self._score_array(ctx.at_level("cluster"), candidates, None, timings, deadline)
        return blend_personalization(scores, cluster, weight)

    async def _score(
        self,
        ctx: RequestContext,
        candidates: np.ndarray,
        ids: list[str],
        k: int,
        history: History | None,
        timings: Timings,
        deadline: float = float("inf"),
        weight: float | None = None,
    ) -> bytes:
        scores = await self._blended(ctx, candidates, history, timings, deadline, weight)
        at = time.perf_counter()
        items = top_k(scores, ids, k)
        timings.add("topk", at)
        return items

    async def _compute_and_store(
        self, ctx: RequestContext, k: int, key: str, timings: Timings, deadline: float = float("inf")
    ) -> bytes:
        candidates = self._retrieve(ctx, timings)
        ids = [self.bundle.tables.entity_ids[i] for i in candidates.tolist()]
        value = with_available(await self._score(ctx, candidates, ids, k, None, timings, deadline), len(ids))
        self.cache.store(key, value)
        return value

    async def _stage_one(
        self, ctx: RequestContext, timings: Timings, deadline: float = float("inf")
    ) -> tuple[np.ndarray, str]:
        """Cluster-level candidates for a `full` request: cached, or retrieved and scored at cluster level."""
        key = ctx.stage_one_key(self.bundle.cache_version)
        started = time.perf_counter()
        packed = await self.cache.get(key)
        timings.add("cache", started)
        if packed is not None:
            return np.frombuffer(packed, np.int32).astype(np.int64), "hit"

        async def compute() -> bytes:
            value = (await self.cluster_candidates(ctx, timings, deadline)).astype(np.int32).tobytes()
            self.cache.store(key, value)
            return value

        value = await self.cache.single_flight(key, compute)
        return np.frombuffer(value, np.int32).astype(np.int64), "miss"

    async def cluster_candidates(
        self, ctx: RequestContext, timings: Timings, deadline: float = float("inf")
    ) -> np.ndarray:
        """Stage one of a `full` request (uncached): retrieval, scored at cluster level, the best kept."""
        candidates = self._retrieve(ctx, timings)
        scores = await self._score_array(ctx.at_level("cluster"), candidates, None, timings, deadline)
        return candidates[np.argsort(-scores, kind="stable")[: self.settings.stage_one_size]]

    def fallback(self, request: RankRequest, reason: str, timings: Timings | None = None) -> RankAnswer:
        """The answer without the model (its deadline passed, or it failed): the cluster-level list this
        worker has in memory for a `full` request, else the candidates by query match (search) and
        popularity in the country. Scores are the fallback order's (1 down to 1/n), not probabilities."""
        timings = timings or Timings()
        ctx = self.context(request)
        tables = self.bundle.tables
        if request.candidates is not None:
            ids, candidates = self._explicit_candidates(request, ctx)
        else:
            cached = (
                self.cache.local_get(ctx.stage_one_key(self.bundle.cache_version)) if ctx.level == Level.FULL else None
            )
            candidates = (
                np.frombuffer(cached, np.int32).astype(np.int64)
                if cached is not None
                else self.bundle.retriever.candidates(ctx)
            )
            ids = [tables.entity_ids[i] for i in candidates.tolist()]
        order = self._fallback_order(
            ctx, candidates, ids, keep_given=request.candidates is None and ctx.level == Level.FULL
        )
        chosen = order[: request.k]
        n = max(len(chosen), 1)
        items = orjson.dumps([{"entity_id": ids[i], "score": (n - r) / n} for r, i in enumerate(chosen)])
        answer = self._answer(request, ctx, _Ranked(items, "bypass", len(ids), None), degraded_reason=reason)
        timings.finish(self.observe)
        return answer

    def _fallback_order(
        self, ctx: RequestContext, candidates: np.ndarray, ids: list[str], keep_given: bool
    ) -> list[int]:
        if keep_given:  # the cluster-level list is already in the order the model gave it
            return list(range(len(ids)))
        tables = self.bundle.tables
        pop = tables.pop[candidates, ctx.country].tolist()
        query = ctx.unified.query if ctx.unified.task == Task.SEARCH else ""
        titles = tables.norm_titles
        match = match_features_many(query, [titles[c] if c > 0 else "" for c in candidates.tolist()])
        return sorted(range(len(ids)), key=lambda i: (-match[i][0], -match[i][1], -pop[i], ids[i]))

    async def _history(self, ctx: RequestContext, timings: Timings) -> History:
        """The user's live history (Redis) before the bundle's snapshot; the snapshot alone when Redis fails."""
        started = time.perf_counter()
        live: list[bytes] = []
        if ctx.unified.user_id:
            with store_failures_tolerated("redis"):
                live = await recent_history(self.redis, ctx.unified.user_id)
        history = self.bundle.features.history(live, ctx.user)
        timings.add("history", started)
        return history
