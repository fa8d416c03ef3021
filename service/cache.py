"""The keystroke cache in Redis and single flight (the connection: `service.redis_client`).

The cached value is the ranked items already encoded as JSON, so a hit costs no encoding. Two layers:
a small per-worker in-memory TTL cache in front of Redis (a hit there skips the network round trip,
which is most of the cost of a keystroke), and Redis, shared by every worker and replica. Keys hold
the model version, so neither layer can serve a ranking of another model. Redis failures never fail a
ranking: the cache is bypassed and the error counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from cachetools import TTLCache

from service.errors import store_failures_tolerated
from service.metrics import CACHE_LAYER, buffered_counter

log = logging.getLogger("unirank.cache")


class RankCache:
    def __init__(self, client: aioredis.Redis, ttl_s: int, local_size: int = 0, local_ttl_s: float = 0.0):
        self.client = client
        self.ttl_s = ttl_s
        self.local: TTLCache | None = TTLCache(local_size, local_ttl_s) if local_size > 0 and local_ttl_s > 0 else None
        self._inflight: dict[str, asyncio.Future] = {}
        self._local_hits = buffered_counter(CACHE_LAYER.labels(layer="local"))
        self._redis_hits = buffered_counter(CACHE_LAYER.labels(layer="redis"))

    def local_get(self, key: str) -> bytes | None:
        """This worker's in-memory layer only (no Redis round trip)."""
        return self.local.get(key) if self.local is not None else None

    async def get(self, key: str) -> bytes | None:
        if self.local is not None and (value := self.local.get(key)) is not None:
            self._local_hits.inc()
            return value
        value = None
        with store_failures_tolerated("redis"):
            value = await self.client.get(key)
        if value is not None:
            self._redis_hits.inc()
            if self.local is not None:
                self.local[key] = value
        return value

    async def set(self, key: str, value: bytes) -> None:
        if self.local is not None:
            self.local[key] = value
        with store_failures_tolerated("redis"):
            await self.client.set(key, value, ex=self.ttl_s)

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
