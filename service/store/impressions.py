"""The served-impression log: every /rank answer, recorded off the response path.

Contract: `record(request, answer)` costs a tuple of plain values and an append: it never waits and never
fails a request; when the buffer holds `UNIRANK_IMPRESSION_BUFFER` records, new ones are dropped and counted
(`unirank_impressions_total{result="dropped"}`). A background task encodes and appends the buffer to the
impressions stream every `UNIRANK_IMPRESSION_FLUSH_MS`: what it holds then, in batches (one entry per
batch of up to 500 records), the stream kept to `UNIRANK_IMPRESSION_RETENTION_S` and about
`UNIRANK_IMPRESSION_LOG_MAX_BYTES` (`StreamBound`), and for requests in an experiment writes
`ur:req:<rid>` (its experiment, variant and interleaving teams, kept `UNIRANK_REQUEST_TTL_S`) so that
/events can credit feedback to a variant. Records the store refuses stay buffered and are retried. Every
`age_every_s` it sets `unirank_impression_log_oldest_seconds`, the age of the stream's oldest entry: the
sink (`unirank logs sink`) trims what it exported, so this is the age of the oldest impression not yet
exported, and an alert fires when it nears the retention. The format is `unirank.core.impression_log`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import redis.asyncio as aioredis

from service.core.answer import RankAnswer
from service.core.errors import STORE_ERRORS, count_error
from service.core.rollout import INTERLEAVED
from service.core.schemas import RankRequest
from service.ops.metrics import EXPERIMENT_REQUESTS, IMPRESSION_LOG_OLDEST, IMPRESSION_LOG_RETENTION, IMPRESSIONS
from service.store.retention import StreamBound
from unirank.core.impression_log import IMPRESSION_SCHEMA, encode_impressions, request_key
from unirank.core.streams import ms_of

log = logging.getLogger("unirank.impressions")


def row(request: RankRequest, answer: RankAnswer) -> tuple:
    """One answer as a row of the log's columns, in `IMPRESSION_SCHEMA` order: plain values only, so that
    the buffer keeps no request or answer object alive until the flush (thousands of them per second
    would only feed the garbage collector); an interleaved answer names no model (its items name theirs)."""
    return (
        answer.request_id,
        int(time.time() * 1000),
        answer.model,
        answer.model_version,
        answer.experiment,
        answer.variant,
        request.task,
        request.country.upper(),
        request.user_id,
        request.query,
        request.source_entity_id,
        answer.level,
        answer.items,
    )


def served_again(row: tuple, request_id: str) -> tuple:
    """`row` for the same answer served again now, under another request id."""
    return (request_id, int(time.time() * 1000), *row[2:])


_RID, _EXPERIMENT, _VARIANT, _ITEMS = (
    IMPRESSION_SCHEMA.get_field_index(n) for n in ("rid", "experiment", "variant", "items")
)


def columns(rows: list[tuple]) -> dict[str, list]:
    """The buffered rows as the log's columns (`unirank.core.impression_log.IMPRESSION_SCHEMA`)."""
    if not rows:
        return {name: [] for name in IMPRESSION_SCHEMA.names}
    return dict(zip(IMPRESSION_SCHEMA.names, map(list, zip(*rows, strict=True)), strict=True))


class ImpressionLog:
    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        bound: StreamBound,
        buffer: int,
        flush_s: float,
        request_ttl_s: int,
        batch: int = 500,
        age_every_s: float = 15.0,
    ):
        self.client = client
        self.stream = stream
        self.bound = bound
        self.age_every_s = age_every_s
        self._age_due = 0.0
        self.capacity = buffer
        self.flush_s = flush_s
        self.request_ttl_s = request_ttl_s
        self.batch = batch
        self._buffer: list[tuple] = []  # rows of IMPRESSION_SCHEMA (`row`)
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

    def record(self, request: RankRequest, answer: RankAnswer) -> None:
        """The answer as served for the request (neither is changed afterwards: the flush reads them)."""
        self.record_row(row(request, answer))
        if answer.experiment is not None:
            self._experiment_counter(answer.experiment, answer.variant).inc()

    def record_row(self, row: tuple) -> None:
        """A row already made (`row`, or `served_again` for an answer outside any experiment)."""
        if len(self._buffer) >= self.capacity:
            self._dropped.inc()
            return
        self._buffer.append(row)

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
        IMPRESSION_LOG_RETENTION.set(self.bound.retention_s)
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                if time.monotonic() >= self._age_due:
                    self._age_due = time.monotonic() + self.age_every_s
                    await self.measure_age()
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
        payload = encode_impressions(columns(batch))
        self.bound.observe(len(payload))
        pipe.xadd(self.stream, {"a": payload}, minid=self.bound.minid(), approximate=False)
        pipe.xtrim(self.stream, maxlen=self.bound.maxlen(), approximate=True)
        for r in batch:
            if r[_EXPERIMENT] is not None:
                key = request_key(r[_RID])
                teams = teams_of(r[_ITEMS]) if r[_VARIANT] == INTERLEAVED else {}
                pipe.hset(key, mapping={"_x": r[_EXPERIMENT], "_v": r[_VARIANT], **teams})
                pipe.expire(key, self.request_ttl_s)
        await pipe.execute()
        del self._buffer[: len(batch)]
        self._written.inc(len(batch))
        return len(batch)

    async def measure_age(self) -> float | None:
        """Seconds since the stream's oldest entry (None: empty), also set as the gauge."""
        oldest = await self.client.xrange(self.stream, count=1)
        age = None if not oldest else max(time.time() - ms_of(oldest[0][0]) / 1000, 0.0)
        IMPRESSION_LOG_OLDEST.set(age or 0.0)
        return age


def teams_of(items_json: bytes) -> dict[str, str]:
    """entity -> variant of an interleaved answer's items (a degraded answer's items carry none)."""
    return {i["entity_id"]: i["variant"] for i in orjson.loads(items_json) if "variant" in i}
