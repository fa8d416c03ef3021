"""The served-impression log: every /rank answer, recorded off the response path.

Contract: `record(ServedImpression)` costs a list append: it never waits and never fails a request; when the buffer
holds `UNIRANK_IMPRESSION_BUFFER` records, new ones are dropped and counted
(`unirank_impressions_total{result="dropped"}`). A background task encodes and appends the buffer to the
impressions stream every `UNIRANK_IMPRESSION_FLUSH_MS`: what it holds then, in batches (one entry per
batch of up to 500 records, the stream capped at about
`UNIRANK_IMPRESSION_STREAM_MAX` entries), and for requests in an experiment writes `ur:req:<rid>` (its
experiment, variant and interleaving teams, kept `UNIRANK_REQUEST_TTL_S`) so that /events can credit
feedback to a variant. Records the store refuses stay buffered and are retried. The format is
`unirank.core.impression_log`.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import redis.asyncio as aioredis

from service.core.errors import STORE_ERRORS, count_error
from service.core.rollout import INTERLEAVED
from service.ops.metrics import EXPERIMENT_REQUESTS, IMPRESSIONS
from unirank.core.impression_log import ServedImpression, request_key

log = logging.getLogger("unirank.impressions")


class ImpressionLog:
    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        max_entries: int,
        buffer: int,
        flush_s: float,
        request_ttl_s: int,
        batch: int = 500,
    ):
        self.client = client
        self.stream = stream
        self.max_entries = max_entries
        self.capacity = buffer
        self.flush_s = flush_s
        self.request_ttl_s = request_ttl_s
        self.batch = batch
        self._buffer: list[ServedImpression] = []
        self._dropped = IMPRESSIONS.labels(result="dropped")
        self._written = IMPRESSIONS.labels(result="written")
        self._task: asyncio.Task | None = None
        self._flushing: asyncio.Task | None = None  # the periodic flush on its way
        self._experiment_counters: dict[tuple, object] = {}

    def _experiment_counter(self, experiment: str, variant: str):
        key = (experiment, variant)
        if key not in self._experiment_counters:
            self._experiment_counters[key] = EXPERIMENT_REQUESTS.labels(experiment=experiment, variant=variant)
        return self._experiment_counters[key]

    def record(self, impression: ServedImpression) -> None:
        if len(self._buffer) >= self.capacity:
            self._dropped.inc()
            return
        self._buffer.append(impression)
        if impression.experiment is not None:
            self._experiment_counter(impression.experiment, impression.variant).inc()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Flushes what is buffered (one try), then stops. A flush on its way finishes first: cancelled
        between its XADD and trimming the buffer, it would have its records appended twice."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
            self._flushing = None
        try:
            while self._buffer:
                await self._flush()
        except STORE_ERRORS as exc:
            count_error("impressions", exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                # what was buffered when the period ended, in batches; what arrives meanwhile waits for the
                # next period (draining until empty, a busy worker flushed back to back: an XADD of a
                # dozen records every round trip, ~15 us of CPU per keystroke hit instead of ~3)
                due = len(self._buffer)
                while due > 0 and self._buffer:
                    self._flushing = asyncio.ensure_future(self._flush())
                    due -= await asyncio.shield(self._flushing)
                    self._flushing = None
            except STORE_ERRORS as exc:  # keep them; the buffer bounds what waits
                count_error("impressions", exc)
                await asyncio.sleep(1.0)

    async def _flush(self) -> int:
        """One stream entry per batch (a JSON array of records): per-command client overhead, not Redis,
        is what a record per entry would cost the worker."""
        batch = self._buffer[: self.batch]
        pipe = self.client.pipeline(transaction=False)
        records = [impression.encode() for impression in batch]
        pipe.xadd(self.stream, {"b": b"[" + b",".join(records) + b"]"}, maxlen=self.max_entries, approximate=True)
        for impression in batch:
            if impression.experiment is not None:
                key = request_key(impression.rid)
                teams = teams_of(impression.items) if impression.variant == INTERLEAVED else {}
                pipe.hset(key, mapping={"_x": impression.experiment, "_v": impression.variant, **teams})
                pipe.expire(key, self.request_ttl_s)
        await pipe.execute()
        del self._buffer[: len(batch)]
        self._written.inc(len(batch))
        return len(batch)


def teams_of(items_json: bytes) -> dict[str, str]:
    """entity -> variant of an interleaved answer's items (a degraded answer's items carry none)."""
    return {i["entity_id"]: i["variant"] for i in orjson.loads(items_json) if "variant" in i}
