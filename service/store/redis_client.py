"""Connecting to Redis: one server or a Redis Cluster, every call through the worker's circuit breaker.

Contract: `connect(url, ...)` returns a client whose commands and pipelines are refused at once while
the breaker is open (`service.store.breaker`) and whose pool makes a caller wait up to `timeout_s` for a free
connection instead of failing. `redis://`, `rediss://` and `unix://` URLs name one server;
`redis+cluster://host:port` (or `rediss+cluster://`) names a Redis Cluster, any node as the seed
(`unirank.core.redis_url`). Code that needs every key of a call in one slot asks `is_cluster(client)`.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError

from service.store.autopipeline import AutoPipeline
from service.store.breaker import CircuitBreaker
from service.store.fast_reads import READS, FastReads
from unirank.core.redis_url import is_cluster as is_cluster_url
from unirank.core.redis_url import node_url


class GuardedRedis(aioredis.Redis):
    """Every command and pipeline goes through the worker's circuit breaker; with `auto_pipeline`,
    concurrent commands go together (`service.store.autopipeline`), and with `fast_reads` the reads of
    `service.store.fast_reads` go on a connection of their own."""

    def __init__(
        self,
        *args,
        breaker: CircuitBreaker | None = None,
        auto_pipeline: bool = False,
        fast_reads: FastReads | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.breaker = breaker or CircuitBreaker(failures=1 << 30)
        self.auto = (
            AutoPipeline(self._execute, lambda: self.pipeline(transaction=False), merge_gets=True)
            if auto_pipeline
            else None
        )
        self.fast_reads = fast_reads

    async def execute_command(self, *args, **options):
        if self.fast_reads is not None and args[0] in READS and options.keys() <= {"keys"}:
            async with self.breaker:
                return await self.fast_reads.execute(*args)
        if self.auto is not None:
            return await self.auto.execute(*args, **options)
        return await self._execute(*args, **options)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.fast_reads is not None:
            await self.fast_reads.aclose()
        await super().aclose(close_connection_pool)

    async def _execute(self, *args, **options):
        async with self.breaker:
            return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> aioredis.client.Pipeline:
        return GuardedPipeline(self.breaker, self.connection_pool, self.response_callbacks, transaction, shard_hint)


class GuardedPipeline(aioredis.client.Pipeline):
    def __init__(self, breaker: CircuitBreaker, *args):
        super().__init__(*args)
        self.breaker = breaker

    async def execute(self, raise_on_error: bool = True):
        async with self.breaker:
            return await super().execute(raise_on_error)


class GuardedRedisCluster(RedisCluster):
    """A Redis Cluster client under the breaker: commands follow the slot map (MOVED/ASK handled by
    redis-py), a pipeline splits its commands per node and sends them concurrently.

    redis-py's cluster nodes fail a call at once (MaxConnectionsError) when their pool is exhausted; here
    at most `max_connections` calls or pipelines run at once (each holds at most one connection per
    node) and the others wait up to `wait_s` for their turn, as the single-server pool does."""

    def __init__(
        self, *args, breaker: CircuitBreaker | None = None, wait_s: float = 1.0, auto_pipeline: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.breaker = breaker or CircuitBreaker(failures=1 << 30)
        self.wait_s = wait_s
        self._turns = asyncio.Semaphore(kwargs.get("max_connections", 2**31))
        self.auto = AutoPipeline(self._execute, self.pipeline) if auto_pipeline else None

    @asynccontextmanager
    async def turn(self):
        if not self._turns.locked():  # a free turn: taken at once, no timer armed (every keystroke's call)
            await self._turns.acquire()
        else:
            try:
                await asyncio.wait_for(self._turns.acquire(), self.wait_s)
            except TimeoutError:
                raise ConnectionError(f"no free Redis Cluster connection within {self.wait_s} s") from None
        try:
            yield
        finally:
            self._turns.release()

    async def execute_command(self, *args, **options):
        if self.auto is not None:
            return await self.auto.execute(*args, **options)
        return await self._execute(*args, **options)

    async def _execute(self, *args, **options):
        async with self.breaker, self.turn():
            return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool | None = None, shard_hint: str | None = None) -> ClusterPipeline:
        return GuardedClusterPipeline(self, transaction)


class GuardedClusterPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True):
        async with self.cluster_client.breaker, self.cluster_client.turn():
            return await super().execute(raise_on_error, allow_redirections)


class QuickBlockingPool(aioredis.BlockingConnectionPool):
    """A BlockingConnectionPool that hands out an idle connection at once. The base class takes a lock
    and arms a timeout on every call (~30 us, more than the command on a keystroke); only when all
    `max_connections` are busy is the wait (and its timeout) needed, and then the base class does it."""

    async def get_connection(self, command_name=None, *keys, **options):
        if not self._available_connections or getattr(self, "_in_maintenance", False):
            return await super().get_connection()
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


def connect(
    url: str,
    timeout_s: float,
    max_connections: int,
    breaker: CircuitBreaker | None = None,
    auto_pipeline: bool = False,
    fast_reads: bool = True,
) -> GuardedRedis | GuardedRedisCluster:
    """A client whose pool makes a request wait (up to `timeout_s`) for a free connection when all
    `max_connections` are busy, instead of failing at once: a burst of concurrent requests queues on the
    pool rather than turning into errors. With a breaker, no call is attempted while it is open. For a
    cluster, `max_connections` bounds each node's pool. `auto_pipeline`: concurrent commands are sent
    together, and (`fast_reads`, not over TLS) a single server's GET, MGET and LRANGE on a connection of their
    own (the request path's reads: `service.store.fast_reads`)."""
    if is_cluster_url(url):
        return GuardedRedisCluster.from_url(
            node_url(url),
            breaker=breaker,
            auto_pipeline=auto_pipeline,
            wait_s=timeout_s,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=max(timeout_s, 0.5),
        )
    pool = QuickBlockingPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=max(timeout_s, 0.5),
        retry_on_timeout=False,
    )
    reads = FastReads.for_url(url, timeout_s) if auto_pipeline and fast_reads else None
    return GuardedRedis(connection_pool=pool, breaker=breaker, auto_pipeline=auto_pipeline, fast_reads=reads)


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)
