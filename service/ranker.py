"""The /rank flow: context -> (cache | retrieval) -> features -> one onnxruntime call -> top k.

- explicit candidates: scored as given (cache "bypass");
- personalization none/cluster: the ranked list depends only on (model version, runtime catalog
  generation, task, country, cluster, normalised query or source, k), so it is cached in Redis with a TTL (single flight);
- personalization full: the cluster-level candidates (stage one) are cached, then re-scored with the
  user's features and live history (stage two), so the keystroke path still skips retrieval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.bundle import LoadedBundle
from service.cache import RankCache
from service.context import RequestContext, build_request_context
from service.events import recent_history
from service.features import History
from service.metrics import CACHE, CANDIDATES, ERRORS, STAGE_LATENCY
from service.schemas import RankRequest
from service.settings import Settings


@dataclass
class Timings:
    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - since)
        return now

    def server_timing(self) -> str:
        self.stages["total"] = time.perf_counter() - self.started
        for stage, seconds in self.stages.items():
            STAGE_LATENCY.labels(stage=stage).observe(seconds)
        return ", ".join(f"{k};dur={v * 1000:.3f}" for k, v in self.stages.items())


@dataclass
class RankResult:
    body: bytes
    cache: str
    timings: Timings


def top_k(scores: np.ndarray, ids: list[str], k: int) -> bytes:
    """Items by score descending, ties broken by entity id, encoded as a JSON array."""
    if k < len(scores):
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= threshold).tolist()  # k, or a few more when scores tie
    else:
        keep = range(len(scores))
    values = scores.tolist()
    order = sorted(keep, key=lambda i: (-values[i], ids[i]))[:k]
    return orjson.dumps([{"entity_id": ids[i], "score": values[i]} for i in order])


class Ranker:
    def __init__(self, bundle: LoadedBundle, cache: RankCache, redis: aioredis.Redis, settings: Settings):
        self.b = bundle
        self.cache = cache
        self.redis = redis
        self.settings = settings
        self._head = b',"model_version":' + orjson.dumps(bundle.version) + b',"task":"'

    def context(self, req: RankRequest) -> RequestContext:
        return build_request_context(req, self.b.tables, self.b.level, self.b.impute)

    async def rank(self, req: RankRequest, rc: RequestContext, timings: Timings) -> RankResult:
        t = time.perf_counter()
        if req.candidates is not None:
            ids = list(dict.fromkeys(req.candidates))
            if rc.unified.task == "more_like_this":
                ids = [i for i in ids if i != rc.unified.source_entity_id]
            cand = self.b.features.encoder.entity_indices(ids)
            hist = await self._history(rc, timings) if rc.level == "full" else None
            items, status = await self._score(rc, cand, ids, req.k, hist, timings), "bypass"
        elif rc.level != "full":
            key = rc.cache_key(self.b.cache_version, req.k)
            items = await self.cache.get(key)
            t = timings.add("cache", t)
            status = "hit" if items is not None else "miss"
            if items is None:
                items = await self.cache.single_flight(key, lambda: self._compute_and_store(rc, req.k, key, timings))
        else:
            cand, status = await self._stage_one(rc, timings)
            hist = await self._history(rc, timings)
            ids = [self.b.tables.entity_ids[i] for i in cand.tolist()]
            items = await self._score(rc, cand, ids, req.k, hist, timings)
        CACHE.labels(result=status).inc()
        body = b'{"items":' + items + self._head + rc.unified.task.encode() + b'","cache":"' + status.encode() + b'"'
        if req.explain:
            body += b',"context":' + orjson.dumps(rc.explain())
        return RankResult(body + b"}", status, timings)

    def _retrieve(self, rc: RequestContext, timings: Timings) -> np.ndarray:
        t = time.perf_counter()
        r, task = self.b.retriever, rc.unified.task
        if task == "search":
            cand = r.search(rc.unified.query, rc.country)
        elif task == "prequery":
            cand = r.prequery(rc.country, rc.cluster)
        else:
            cand = r.more_like_this(rc.source, rc.country)
        timings.add("retrieval", t)
        return cand

    async def _score_array(self, rc: RequestContext, cand: np.ndarray, hist: History | None, timings: Timings) -> np.ndarray:
        t = time.perf_counter()
        CANDIDATES.labels(task=rc.unified.task).observe(len(cand))
        if len(cand) == 0:
            return np.zeros(0, np.float32)
        inputs = self.b.features.inputs(rc, cand, hist)
        t = timings.add("features", t)
        scores = await self.b.score(inputs)
        timings.add("inference", t)
        return scores

    async def _score(self, rc, cand, ids, k, hist, timings) -> bytes:
        return top_k(await self._score_array(rc, cand, hist, timings), ids, k)

    async def _compute_and_store(self, rc: RequestContext, k: int, key: str, timings: Timings) -> bytes:
        cand = self._retrieve(rc, timings)
        ids = [self.b.tables.entity_ids[i] for i in cand.tolist()]
        items = await self._score(rc, cand, ids, k, None, timings)
        await self.cache.set(key, items)
        return items

    async def _stage_one(self, rc: RequestContext, timings: Timings) -> tuple[np.ndarray, str]:
        """Cluster-level candidates for a `full` request: cached, or retrieved and scored at cluster level."""
        key = rc.stage_one_key(self.b.cache_version)
        t = time.perf_counter()
        packed = await self.cache.get(key)
        timings.add("cache", t)
        if packed is not None:
            return np.frombuffer(packed, np.int32).astype(np.int64), "hit"

        async def compute() -> bytes:
            cand = self._retrieve(rc, timings)
            cluster_rc = RequestContext(rc.unified, "cluster", 0, rc.cluster, rc.country, rc.source)
            scores = await self._score_array(cluster_rc, cand, None, timings)
            keep = cand[np.argsort(-scores, kind="stable")[: self.settings.stage_one_size]]
            value = keep.astype(np.int32).tobytes()
            await self.cache.set(key, value)
            return value

        value = await self.cache.single_flight(key, compute)
        return np.frombuffer(value, np.int32).astype(np.int64), "miss"

    async def _history(self, rc: RequestContext, timings: Timings) -> History:
        t = time.perf_counter()
        live: list[bytes] = []
        if rc.unified.user_id:
            try:
                live = await recent_history(self.redis, rc.unified.user_id)
            except (RedisError, OSError) as exc:  # rank on the bundle's snapshot rather than fail
                ERRORS.labels(type=f"redis_{type(exc).__name__}").inc()
        history = self.b.features.history(live, rc.user)
        timings.add("history", t)
        return history
