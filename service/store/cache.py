"""The keystroke cache in Redis and single flight (the connection: `service.store.redis_client`).

The cached value is the ranked items already encoded as JSON, so a hit costs no encoding. Two layers:
a small per-worker in-memory TTL cache in front of Redis (a hit there skips the network round trip,
which is most of the cost of a keystroke), and Redis, shared by every worker and replica. Keys hold
the model version, so neither layer can serve a ranking of another model. Redis failures never fail a
ranking: the cache is bypassed and the error counted.

`store(key, value)` never waits: the value is in this worker's layer at once, and goes to Redis behind
the response: the writes of one event-loop iteration together in one pipeline, one pipeline at a time
(those issued meanwhile wait for the next), `max_pending` keys waiting at most (beyond, and when Redis
fails a pipeline, the writes are dropped and counted: `unirank_cache_writes_total{result}`; it is a
cache). On one Redis server the pipeline is one script call (EVALSHA) that sets every key of it, up to
1,000 a call: ~140 us of client CPU for eight rankings, against ~225 us as eight pipelined SETs; a
cluster, whose keys span slots, gets the SETs. A ranking request awaiting its own write paid ~50 us of
a keystroke miss's ~300 us of CPU. `close()` writes what waits, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from service.core.errors import store_failures_tolerated
from service.ops.metrics import CACHE_LAYER, CACHE_WRITES, buffered_counter
from service.store.redis_client import is_cluster

log = logging.getLogger("unirank.cache")

# KEYS: the rankings' keys; ARGV: the TTL in seconds, then the values in the keys' order
_SET_ALL = "for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1]) end return #KEYS"
_SET_ALL_MAX = 1000  # keys per script call: one call holds Redis for its duration


class LocalLayer:
    """A worker's in-memory layer: at most `size` values, each for `ttl_s` after it was set. Every value
    has the same TTL, so insertion order is expiry order: a dict in insertion order evicts the soonest
    to expire. A read costs ~0.1 us, where cachetools' TTLCache (its timer, its LRU links) costs ~1 us,
    and every keystroke reads it."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.size, self.ttl_s, self.clock = size, ttl_s, clock
        self._entries: dict[str, tuple[bytes, float]] = {}

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._entries[key]
            return None
        return entry[0]

    def expiry(self, key: str) -> float | None:
        """When the value under `key` expires (on `clock`), or None when there is none."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[1] > self.clock() else None

    def __setitem__(self, key: str, value: bytes) -> None:
        entries, now = self._entries, self.clock()
        entries.pop(key, None)  # set again: its TTL starts again, at the end of the order
        while entries:
            oldest = next(iter(entries))
            if len(entries) < self.size and entries[oldest][1] > now:
                break
            del entries[oldest]
        entries[key] = (value, now + self.ttl_s)

    def __len__(self) -> int:
        return len(self._entries)


class RankCache:
    def __init__(
        self,
        client: aioredis.Redis,
        ttl_s: int,
        local_size: int = 0,
        local_ttl_s: float = 0.0,
        max_pending: int = 10_000,
    ):
        self.client = client
        self.ttl_s = ttl_s
        self.local = LocalLayer(local_size, local_ttl_s) if local_size > 0 and local_ttl_s > 0 else None
        self.max_pending = max_pending
        self._inflight: dict[str, asyncio.Future] = {}
        self._pending: dict[str, bytes] = {}  # writes behind, not yet sent (the latest value of each key)
        self._writing: asyncio.Task | None = None
        # the last pipeline's writes: while on their way, and for a second once written (a look-up that
        # Redis answered before they landed may read its reply only after they did)
        self._batch: dict[str, bytes] = {}
        self._batch_until = 0.0
        self._scheduled = False
        self._local_hits = buffered_counter(CACHE_LAYER.labels(layer="local"))
        self._redis_hits = buffered_counter(CACHE_LAYER.labels(layer="redis"))
        self._written = buffered_counter(CACHE_WRITES.labels(result="written"))
        self._dropped = buffered_counter(CACHE_WRITES.labels(result="dropped"))
        self._set_all = None if is_cluster(client) else client.register_script(_SET_ALL)

    def local_get(self, key: str) -> bytes | None:
        """This worker's in-memory layer only (no Redis round trip)."""
        return self.local.get(key) if self.local is not None else None

    def local_expiry(self, key: str) -> float | None:
        """Until when this worker's in-memory layer serves its value of `key` (None: it holds none, or
        the layer is off)."""
        return self.local.expiry(key) if self.local is not None else None

    def count_local_hit(self) -> None:
        """A hit served from this worker's memory without `get` (a repeated request's: `service.ranking.repeats`)."""
        self._local_hits.inc()

    async def get(self, key: str) -> bytes | None:
        if self.local is not None and (value := self.local.get(key)) is not None:
            self._local_hits.inc()
            return value
        value = None
        with store_failures_tolerated("redis"):
            value = await self.client.get(key)
        if value is None:  # computed in this worker while the look-up was on its way, not yet in Redis?
            value = self._written_behind(key)
            if value is not None:
                self._local_hits.inc()
            return value
        self._redis_hits.inc()
        if self.local is not None:
            self.local[key] = value
        return value

    def _written_behind(self, key: str) -> bytes | None:
        value = self.local.get(key) if self.local is not None else None
        if value is None:
            value = self._pending.get(key)
        if value is None and time.monotonic() < self._batch_until:
            value = self._batch.get(key)
        return value

    def store(self, key: str, value: bytes) -> None:
        """In this worker's layer now, in Redis behind the response (see the module docstring)."""
        if self.local is not None:
            self.local[key] = value
        if len(self._pending) >= self.max_pending and key not in self._pending:
            self._dropped.inc()
            return
        self._pending[key] = value
        if not self._scheduled and self._writing is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._write_pending)

    def _write_pending(self) -> None:
        self._scheduled = False
        if self._pending and self._writing is None:
            batch, self._pending = self._pending, {}
            self._writing = asyncio.get_running_loop().create_task(self._write(batch))

    async def _write(self, batch: dict[str, bytes]) -> None:
        self._batch, self._batch_until = batch, float("inf")
        try:
            written = False
            with store_failures_tolerated("redis"):
                if self._set_all is not None:
                    keys, values = list(batch), list(batch.values())
                    for at in range(0, len(keys), _SET_ALL_MAX):
                        chunk = slice(at, at + _SET_ALL_MAX)
                        await self._set_all(keys=keys[chunk], args=[self.ttl_s, *values[chunk]])
                else:
                    pipe = self.client.pipeline(transaction=False)
                    for key, value in batch.items():
                        pipe.set(key, value, ex=self.ttl_s)
                    await pipe.execute()
                written = True
            (self._written if written else self._dropped).inc(len(batch))
        finally:
            self._writing, self._batch_until = None, time.monotonic() + 1.0
            if self._pending:  # issued while this pipeline was on its way
                self._write_pending()

    async def close(self) -> None:
        """Writes what waits: the pipeline on its way, then one more for what was issued meanwhile."""
        for _ in range(3):
            if self._writing is not None:
                await asyncio.gather(self._writing, return_exceptions=True)
            elif self._pending:
                self._write_pending()
            else:
                return

    async def single_flight(self, key: str, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        """Concurrent identical misses in this worker share one computation."""
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await compute()
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody logs it twice
            raise
        finally:
            del self._inflight[key]
