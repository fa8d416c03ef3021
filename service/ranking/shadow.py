"""Shadow scoring: the shadow model ranks a copy of served requests after their responses went out, and
its agreement with what was served is measured.

Contract: `offer()` never waits and never fails a request: it puts the request on a bounded queue, or
counts it dropped (`unirank_shadow_total{result="dropped"}`) when the queue is full. One background task
scores what is queued with the shadow model (metrics off for that model's own counters) and records
its latency, overlap@10 with the served list and Kendall's tau over the items both lists hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from service.core.schemas import RankRequest
from service.ops.metrics import SHADOW, SHADOW_CORRELATION, SHADOW_LATENCY, SHADOW_OVERLAP
from service.ranking.ranker import Ranker

log = logging.getLogger("unirank.shadow")


def overlap_at(served: list[str], shadow: list[str], k: int = 10) -> float | None:
    top = served[:k]
    return len(set(top) & set(shadow[:k])) / len(top) if top else None


def kendall_tau(served: list[str], shadow: list[str]) -> float | None:
    """Kendall's tau between two orders of the items both hold (None under two such items)."""
    position = {e: i for i, e in enumerate(shadow)}
    ranks = [position[e] for e in served if e in position]
    n = len(ranks)
    if n < 2:
        return None
    concordant = sum(1 for i in range(n) for j in range(i + 1, n) if ranks[i] < ranks[j])
    pairs = n * (n - 1) // 2
    return (2 * concordant - pairs) / pairs


class ShadowScorer:
    def __init__(self, capacity: int, ranker_of: Callable[[str], Ranker | None]):
        """ranker_of(model name): that model's shadow ranker, or None once it is unloaded."""
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max(capacity, 1))
        self.ranker_of = ranker_of
        self._dropped = SHADOW.labels(result="dropped")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def offer(self, model: str, request: RankRequest, served_items: bytes) -> None:
        """served_items: the served answer's items (a JSON array)."""
        try:
            self.queue.put_nowait((model, request, served_items))
        except asyncio.QueueFull:
            self._dropped.inc()

    async def _run(self) -> None:
        while True:
            model, request, served_items = await self.queue.get()
            ranker = self.ranker_of(model)
            if ranker is None:
                SHADOW.labels(result="unloaded").inc()
                continue
            started = time.perf_counter()
            try:
                shadow_items = (await ranker.rank(request)).items
            except Exception:
                SHADOW.labels(result="failed").inc()
                log.warning("shadow scoring with %s failed", model, exc_info=True)
                continue
            SHADOW_LATENCY.observe(time.perf_counter() - started)
            served = [i["entity_id"] for i in orjson.loads(served_items)]
            shadow = [i["entity_id"] for i in orjson.loads(shadow_items)]
            if (overlap := overlap_at(served, shadow)) is not None:
                SHADOW_OVERLAP.observe(overlap)
            if (tau := kendall_tau(served[:50], shadow[:50])) is not None:
                SHADOW_CORRELATION.observe(tau)
            SHADOW.labels(result="scored").inc()
