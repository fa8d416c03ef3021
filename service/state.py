"""What one worker holds between requests, and its life: connections, the fleet of models, the shadow.

Contract: `AppState.start()` connects (REDIS_URL, or an embedded redis-server), starts the fleet in
the background (the start-up bundle, then the control document's models and routing) and returns once
the start-up model loaded and the control document was read, or its first try failed, or
`startup_wait_s` passed; until the routing's default model is loaded `ready` is False and `load_error`
says why. `stop()` releases
everything. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from service.ops import heap, metrics
from service.ops.drain import Drain
from service.ranking.fleet import Fleet
from service.ranking.shadow import ShadowScorer
from service.store.breaker import CircuitBreaker
from service.store.cache import RankCache
from service.store.control import ControlStore
from service.store.events import EventStore
from service.store.impressions import ImpressionLog
from service.store.redis_client import connect
from service.store.redis_server import EmbeddedRedis
from service.store.retention import StreamBound

log = logging.getLogger("unirank.state")


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis | None = None  # the /rank path's reads (short timeout)
    events_redis: aioredis.Redis | None = None  # writes of accepted events (longer timeout)
    catalog_redis: aioredis.Redis | None = None  # blocking reads of the runtime catalog log
    control_redis: aioredis.Redis | None = None  # the model list and routing
    cache_redis: aioredis.Redis | None = None  # the ranking cache (the same as `redis` unless configured)
    breaker: CircuitBreaker | None = None
    cache_breaker: CircuitBreaker | None = None
    cache: RankCache | None = None
    events: EventStore | None = None
    fleet: Fleet | None = None
    shadow: ShadowScorer | None = None
    impressions: ImpressionLog | None = None
    embedded: EmbeddedRedis | None = None
    drain: Drain = field(init=False)
    gc_pauses: heap.PauseRecorder = field(default_factory=heap.PauseRecorder)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.drain = Drain(self.settings.drain_s)

    async def start(self) -> None:
        s = self.settings
        self.drain.install()
        heap.tune()
        self.gc_pauses.install()
        self._tasks.append(asyncio.create_task(self.gc_pauses.run()))
        self._tasks.append(asyncio.create_task(metrics.flush_every(1.0)))  # the request path's histograms
        url = s.redis_url
        if not url:
            self.embedded = EmbeddedRedis()  # in this thread: it is tied to the thread that starts it
            url = self.embedded.url
        # the request path's clients share one circuit breaker: no call waits on a Redis known to be down;
        # the background readers (catalog, control) retry on their own and keep out of the breaker
        self.breaker = CircuitBreaker(s.redis_breaker_failures, s.redis_breaker_open_s)
        # the request path's reads go to Redis together when requests run concurrently (auto-pipelining;
        # on one server its GET, MGET and LRANGE on a connection of their own: service.store.fast_reads)
        self.redis = connect(url, s.redis_timeout_s, s.redis_max_connections, self.breaker, auto_pipeline=True)
        self.events_redis = connect(url, s.events_timeout_s, s.redis_max_connections, self.breaker)
        self.catalog_redis = connect(url, s.catalog_block_s + 2.0, 64)  # one blocking reader per model
        self.control_redis = connect(url, 2.0, 8)
        self.cache_redis = self.redis
        if s.cache_redis_url:  # the evictable cache in a Redis of its own (docs/resilience.md, "Redis memory")
            self.cache_breaker = CircuitBreaker(s.redis_breaker_failures, s.redis_breaker_open_s)
            self.cache_redis = connect(
                s.cache_redis_url, s.redis_timeout_s, s.redis_max_connections, self.cache_breaker, auto_pipeline=True
            )
        feedback = StreamBound(s.impression_retention_s, s.feedback_log_max_bytes)
        self.events = EventStore(self.events_redis, s.history_ttl_s, s.feedback_stream, feedback)
        self.cache = RankCache(self.cache_redis, s.cache_ttl_s, s.local_cache_size, s.local_cache_ttl_s)
        control = ControlStore(self.control_redis, s.control_key, s.replica_id)
        self.fleet = Fleet(s, self.cache, self.redis, self.catalog_redis, control)
        self.shadow = ShadowScorer(s.shadow_queue_size, self.fleet.shadow_ranker)
        self.shadow.start()
        if s.impression_log:
            self.impressions = ImpressionLog(
                self.events_redis,
                s.impression_stream,
                StreamBound(s.impression_retention_s, s.impression_log_max_bytes),
                s.impression_buffer,
                s.impression_flush_ms / 1000,
                s.request_ttl_s,
            )
            self.impressions.start()
        self._tasks.append(asyncio.create_task(self.fleet.run()))
        # uvicorn accepts connections once this returns: a worker that replaces a dead one (or joins its
        # siblings on the shared socket) would otherwise take requests it can only answer with 503
        try:
            await asyncio.wait_for(self.fleet.settled.wait(), s.startup_wait_s)
        except TimeoutError:
            log.warning("the start-up model is not loaded after %.0f s; serving (503) meanwhile", s.startup_wait_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await _within(asyncio.gather(*self._tasks, return_exceptions=True), "background tasks")
        if self.shadow is not None:
            await _within(self.shadow.stop(), "shadow scorer")
        if self.impressions is not None:
            await _within(self.impressions.stop(), "impression log")
        if self.fleet is not None:
            await _within(self.fleet.close(), "models")
        if self.cache is not None:
            await _within(self.cache.close(), "cache writes")
        for client in {self.redis, self.events_redis, self.catalog_redis, self.control_redis, self.cache_redis}:
            if client is not None:
                await client.aclose()
        if self.embedded is not None:
            self.embedded.close()
        self.gc_pauses.uninstall()

    @property
    def ready(self) -> bool:
        return self.fleet is not None and self.fleet.default is not None

    @property
    def load_error(self) -> str:
        return self.fleet.load_error if self.fleet is not None else "starting"

    @property
    def bundle(self) -> LoadedBundle | None:
        """The routing's default model's bundle (what /model and /entities describe)."""
        default = self.fleet.default if self.fleet is not None else None
        return default.bundle if default is not None else None


async def _within(step, what: str, timeout_s: float = 5.0) -> None:
    """Shutdown must end: a step that hangs is logged (with what every task is doing) and left behind."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.error("stopping the %s took over %.0f s; going on without it", what, timeout_s)
        for task in asyncio.all_tasks():
            log.error("still running: %r", task)
