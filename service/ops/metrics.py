"""Prometheus metrics; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set (`unirank serve --workers N`).

Contract: every metric of the service is defined here (docs/settings.md lists them). The request path's
histograms are observed through `buffered(child)`: an observation is a list append, and `flush()` adds
the buffered ones to the histogram in bulk (bucket counts by numpy, one increment per bucket); `render()`
flushes first, so a scrape of this worker never misses one, and the worker flushes every second
(`flush_every`), so with several workers the others' are at most that late. prometheus-client's own
observe costs ~1.5 us (two locks and a bucket loop in Python), and /rank observes ten a request.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

REQUEST_LATENCY = Histogram(
    "unirank_request_duration_seconds",
    "Request latency by endpoint, task and the model that answered (/rank)",
    ["endpoint", "task", "model"],
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY = Histogram(
    "unirank_stage_duration_seconds", "Latency of /rank stages", ["stage"], buckets=LATENCY_BUCKETS
)
CANDIDATES = Histogram(
    "unirank_candidates",
    "Candidates scored per /rank request",
    ["task"],
    buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000),
)
CACHE = Counter("unirank_cache_total", "Keystroke cache look-ups by result and model", ["result", "model"])
CACHE_LAYER = Counter("unirank_cache_layer_hits_total", "Cache hits by layer (local: this worker's memory)", ["layer"])
CACHE_WRITES = Counter(
    "unirank_cache_writes_total", "Rankings written behind to the Redis cache, by result", ["result"]
)
BATCH_WAIT = Histogram(
    "unirank_batch_wait_seconds",
    "Micro-batching: time a request waited for its batch to start",
    buckets=LATENCY_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    "unirank_batch_requests", "Micro-batching: requests per inference call", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
BATCH_CANDIDATES = Histogram(
    "unirank_batch_candidates",
    "Micro-batching: candidates per inference call",
    buckets=(10, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000),
)
REDIS_BATCH = Histogram(
    "unirank_redis_batch_commands",
    "Request-path Redis commands sent together (auto-pipelined, or one write of the fast reads; 1: alone)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
ERRORS = Counter("unirank_errors_total", "Errors by type", ["type"])
EVENTS = Counter("unirank_events_total", "Engagement events stored", ["action"])
RUNTIME_ENTITIES = Gauge(
    "unirank_runtime_entities", "Entities added at run time (POST /entities) this worker ranks", multiprocess_mode="max"
)
MODEL_INFO = Gauge(
    "unirank_model_info",
    "Every model a worker holds (1 loaded, 0 unloaded since)",
    ["model", "version", "personalization", "provider"],
    multiprocess_mode="liveall",
)
IMPRESSIONS = Counter("unirank_impressions_total", "Served rankings for the impression log, by result", ["result"])
IMPRESSION_LOG_OLDEST = Gauge(
    "unirank_impression_log_oldest_seconds",
    "Age of the impressions stream's oldest entry: the oldest impression the sink has not exported yet",
    multiprocess_mode="max",
)
IMPRESSION_LOG_RETENTION = Gauge(
    "unirank_impression_log_retention_seconds",
    "How long the impression and feedback streams keep an entry (UNIRANK_IMPRESSION_RETENTION_S)",
    multiprocess_mode="max",
)
EXPERIMENT_REQUESTS = Counter(
    "unirank_experiment_requests_total", "/rank answers per experiment and variant", ["experiment", "variant"]
)
EXPERIMENT_EVENTS = Counter(
    "unirank_experiment_events_total",
    "Clicks and plays credited to an experiment's variant (for interleaving: the team that showed the item)",
    ["experiment", "variant", "action"],
)
FEEDBACK = Counter(
    "unirank_feedback_total", "Clicks and plays that named their request, by whether it was known", ["result"]
)
BREAKER_STATE = Gauge(
    "unirank_redis_breaker_state",
    "The worker's Redis circuit breaker: 0 closed, 1 half-open, 2 open",
    multiprocess_mode="max",
)
BREAKER_TRANSITIONS = Counter("unirank_redis_breaker_transitions_total", "Circuit breaker state changes", ["to"])
REJECTED = Counter("unirank_rejected_total", "Requests refused at once by admission control (503)", ["endpoint"])
DEGRADED = Counter("unirank_degraded_total", "/rank answered with the fallback ranking, by reason", ["reason"])
SHADOW = Counter("unirank_shadow_total", "Shadow scoring of served requests by result", ["result"])
SHADOW_LATENCY = Histogram("unirank_shadow_duration_seconds", "Shadow model's ranking time", buckets=LATENCY_BUCKETS)
SHADOW_OVERLAP = Histogram(
    "unirank_shadow_overlap_at_10",
    "Share of the served top 10 that the shadow model's top 10 holds too",
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
SHADOW_CORRELATION = Histogram(
    "unirank_shadow_rank_correlation",
    "Kendall's tau between the served and the shadow order of the items both returned",
    buckets=(-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)

GC_PAUSE = Histogram(
    "unirank_gc_pause_seconds",
    "Garbage collections of the worker by generation, and how long each stopped it",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)


class Observations:
    """One histogram child's observations waiting to be added to it (at most `limit`: then at once)."""

    __slots__ = ("child", "bounds", "values", "limit")

    def __init__(self, child, limit: int = 4096):
        self.child = child
        self.bounds = np.asarray(child._upper_bounds, np.float64)
        self.values: list[float] = []
        self.limit = limit

    def observe(self, value: float) -> None:
        values = self.values
        values.append(value)
        if len(values) >= self.limit:  # nobody flushes (a process without the worker's task): stay bounded
            self.flush()

    def flush(self) -> None:
        if not self.values:
            return
        values = np.asarray(self.values, np.float64)
        self.values.clear()
        # the bucket prometheus-client's observe picks: the first upper bound >= the value
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds))
        self.child._sum.inc(float(values.sum()))
        for bucket in np.flatnonzero(counts).tolist():
            self.child._buckets[bucket].inc(int(counts[bucket]))


class Increments:
    """One counter child's increments waiting to be added to it (flushed with the histograms): a
    prometheus-client `inc()` takes a lock and costs a few microseconds, this one adds to an int."""

    __slots__ = ("child", "count")

    def __init__(self, child):
        self.child = child
        self.count = 0

    def inc(self, amount: int = 1) -> None:
        self.count += amount

    def flush(self) -> None:
        if self.count:
            count, self.count = self.count, 0
            self.child.inc(count)


_buffers: dict[int, Observations | Increments] = {}


def _buffer_of(child, kind):
    found = _buffers.get(id(child))
    if found is None or found.child is not child:
        found = _buffers[id(child)] = kind(child)
    return found


def buffered(child) -> Observations:
    """The buffer of a histogram (or a labelled child of one); one per child."""
    return _buffer_of(child, Observations)


def buffered_counter(child) -> Increments:
    """The buffer of a counter (or a labelled child of one); one per child."""
    return _buffer_of(child, Increments)


def flush() -> None:
    for observations in list(_buffers.values()):
        observations.flush()


async def flush_every(period_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(period_s)
        flush()


def render() -> tuple[bytes, str]:
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
