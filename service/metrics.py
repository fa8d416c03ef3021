"""Prometheus metrics; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set (`unirank serve --workers N`)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

REQUEST_LATENCY = Histogram("unirank_request_duration_seconds", "Request latency by endpoint and task",
                            ["endpoint", "task"], buckets=LATENCY_BUCKETS)  # fmt: skip
STAGE_LATENCY = Histogram("unirank_stage_duration_seconds", "Latency of /rank stages", ["stage"], buckets=LATENCY_BUCKETS)
CANDIDATES = Histogram("unirank_candidates", "Candidates scored per /rank request", ["task"],
                       buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000))  # fmt: skip
CACHE = Counter("unirank_cache_total", "Keystroke cache look-ups by result", ["result"])
CACHE_LAYER = Counter("unirank_cache_layer_hits_total", "Cache hits by layer (local: this worker's memory)", ["layer"])
BATCH_WAIT = Histogram("unirank_batch_wait_seconds", "Micro-batching: time a request waited for its batch to start",
                       buckets=LATENCY_BUCKETS)  # fmt: skip
BATCH_REQUESTS = Histogram("unirank_batch_requests", "Micro-batching: requests per inference call",
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128))  # fmt: skip
BATCH_CANDIDATES = Histogram("unirank_batch_candidates", "Micro-batching: candidates per inference call",
                             buckets=(10, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000))  # fmt: skip
ERRORS = Counter("unirank_errors_total", "Errors by type", ["type"])
EVENTS = Counter("unirank_events_total", "Engagement events stored", ["action"])
RUNTIME_ENTITIES = Gauge("unirank_runtime_entities", "Entities added at run time (POST /entities) this worker ranks",
                         multiprocess_mode="max")  # fmt: skip
MODEL_INFO = Gauge("unirank_model_info", "The loaded model (value 1)", ["version", "personalization", "provider"],
                   multiprocess_mode="liveall")  # fmt: skip


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
