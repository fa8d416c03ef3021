"""Service settings from environment variables (prefix UNIRANK_, plus the conventional REDIS_URL).

Contract: every field is a documented environment variable (docs/settings.md).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNIRANK_", extra="ignore")

    bundle: str = Field(
        "artifacts/demo",
        description="The start-up bundle (model 'default'): a directory, or an s3:// / gs:// URL; waited for",
    )
    host: str = Field("127.0.0.1", description="Address `unirank serve` binds (0.0.0.0 in the container)")
    port: int = Field(8000, description="Port `unirank serve` listens on")
    workers: int = Field(1, ge=1, description="uvicorn worker processes of `unirank serve`")
    startup_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a starting worker waits for its model before it accepts connections "
        "(a bundle that is missing or fails to load: at once; /readyz answers 503 until it loads)",
    )
    drain_s: float = Field(
        2.0,
        ge=0,
        description="On SIGTERM, how long the worker goes on serving with /readyz 503 and `Connection: close` "
        "on every response before it stops accepting (0: at once)",
    )
    graceful_shutdown_s: float = Field(
        20.0, description="On SIGTERM, after the drain, how long in-flight requests may finish"
    )
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="How long an idle client connection stays open (longer than a load balancer's idle timeout)",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("UNIRANK_REDIS_URL", "REDIS_URL"),
        description="Redis server (redis://, rediss://, unix://) or Redis Cluster (redis+cluster://host:port, any "
        "node); unset: an embedded redis-server",
    )
    cache_redis_url: str | None = Field(
        None,
        description="A Redis (or Redis Cluster) for the ranking cache only (evictable: allkeys-lru); unset: the one "
        "of REDIS_URL",
    )
    redis_timeout_s: float = Field(0.05, description="Socket timeout of each Redis call on the /rank path")
    redis_breaker_failures: int = Field(5, ge=1, description="Consecutive Redis failures that open the circuit")
    redis_breaker_open_s: float = Field(2.0, gt=0, description="How long an open circuit skips Redis before a probe")
    max_in_flight: int = Field(32, ge=1, description="Requests a worker ranks at once (/rank); beyond: 503 at once")
    max_queue_delay_ms: float = Field(
        25.0,
        gt=0,
        description="When the event loop runs this late for 100 ms on end (requests queueing in it), /rank is "
        "refused (503) until it catches up; /events is not (it has a budget of its own)",
    )
    events_max_in_flight: int = Field(
        256,
        ge=1,
        description="/events batches a worker handles at once, counted apart from /rank (a ranking overload never "
        "sheds feedback); beyond: 503 at once",
    )
    request_budget_ms: float = Field(
        150.0,
        gt=0,
        description="Time a /rank may take before the fallback ranking answers (X-Request-Timeout-Ms lowers it)",
    )
    max_body_bytes: int = Field(4 << 20, ge=1024, description="Largest request body accepted (413 beyond)")
    ingest_token: str | None = Field(None, description="Bearer token POST /events requires; unset: open")
    events_timeout_s: float = Field(1.0, description="Socket timeout of the Redis write behind POST /events")
    redis_max_connections: int = 64
    cache_ttl_s: int = Field(300, description="TTL of cached keystroke rankings in Redis")
    cache_max_age_s: int = Field(
        60,
        ge=0,
        description="Cache-Control max-age of the cacheable GET rankings (/search, /prequery, /more_like_this)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="Origins whose browser apps may call the API (CORS), JSON list or comma-separated; "
        '["*"]: any; empty: CORS off',
    )
    demo_page: bool = Field(False, description="Serve the demo page at GET /demo (`make serve` turns it on)")
    local_cache_size: int = Field(
        20_000, description="Rankings each worker also keeps in memory, and answers to repeated requests (0: off)"
    )
    local_cache_ttl_s: float = Field(30.0, description="TTL of a ranking in a worker's memory")
    history_ttl_s: int = Field(30 * 86400, description="TTL of a user's recent history and counters")
    execution_provider: Literal["auto", "cuda", "cpu"] = Field("auto", description="onnxruntime provider")
    intra_op_threads: int = Field(1, description="onnxruntime intra-op threads per worker")
    cuda_io_binding: bool = Field(False, description="On CUDA, copy inputs into device buffers allocated once per size")
    micro_batch: bool | None = Field(
        None,
        description="Score concurrent requests in one call; unset or true: on (in a window; on the CPU in the "
        "event loop, with CUDA in a worker thread); false: off",
    )
    micro_batch_window_ms: float = Field(
        1.0, ge=0, description="How long a request may wait for others to join its batch"
    )
    micro_batch_max_candidates: int = Field(16_384, ge=1, description="Candidates per batched inference call, at most")
    rank_by: Literal["click", "play"] | None = Field(
        None, description="Ranking score: P(click) or P(play); unset: the bundle's"
    )
    retrieval_limit: int = Field(200, description="Candidates retrieved per request when none are given")
    stage_one_size: int = Field(100, description="Cluster-level candidates kept for re-scoring with 'full'")
    session_candidates: int = Field(
        50,
        ge=0,
        description="With 'full', titles related to the user's live engagements (co-engaged, same franchise) "
        "added to the cluster's candidates before re-scoring (0: off)",
    )
    bundle_poll_s: float = Field(1.0, description="How often to look for a missing bundle")
    bench_endpoints: bool = Field(False, description="Expose POST /bench/noop (the benchmark's ceiling)")
    admin_token: str | None = Field(
        None, description="Bearer token of the admin endpoints (/entities, /admin/*); unset: they are off"
    )
    catalog_stream: str = Field("ur:entities", description="Redis stream holding the entities added at run time")
    catalog_block_s: float = Field(
        1.0, gt=0, description="Blocking read of the runtime catalog log (entities added at run time)"
    )
    catalog_compact_entries: int = Field(
        1000,
        ge=1,
        description="Once the runtime catalog log holds more entries than this, one worker folds those older than "
        "ten minutes into its snapshot and trims them",
    )

    replica_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This replica's name among the service's (`unirank serve` sets one for all its workers)",
    )
    control_key: str = Field("ur:control", description="Redis key of the fleet's model list and routing")
    control_poll_s: float = Field(0.25, gt=0, description="How often each worker reads the model list and routing")
    model_ready_timeout_s: float = Field(
        120.0, gt=0, description="How long POST /admin/models waits for every worker of the replica to load"
    )
    bundle_cache_dir: str = Field(
        default_factory=lambda: os.path.join(tempfile.gettempdir(), "unirank-bundles"),
        description="Where bundles from object-store URLs are downloaded (by content hash)",
    )
    shadow_queue_size: int = Field(1000, ge=1, description="Requests waiting for shadow scoring, at most")
    impression_log: bool = Field(True, description="Record every /rank answer in the impressions stream")
    impression_stream: str = Field("ur:impressions", description="Redis stream of served rankings")
    impression_retention_s: float = Field(
        86_400.0,
        gt=0,
        description="How long the impression and feedback streams keep an entry (what `unirank logs sink` has not "
        "moved by then is trimmed unexported; an alert fires at 80 %)",
    )
    impression_log_max_bytes: int = Field(
        1 << 30, ge=1024, description="About how many bytes of Redis the impressions stream may take"
    )
    impression_buffer: int = Field(10_000, ge=1, description="Records a worker buffers for the log; beyond: dropped")
    impression_flush_ms: float = Field(50.0, gt=0, description="How often a worker appends its buffer to the stream")
    feedback_stream: str = Field("ur:feedback", description="Redis stream of clicks and plays that named their request")
    feedback_log_max_bytes: int = Field(
        256 << 20, ge=1024, description="About how many bytes of Redis the feedback stream may take"
    )
    request_ttl_s: int = Field(
        86_400, ge=1, description="How long a request in an experiment is remembered to credit its feedback"
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value):
        """A JSON list, or origins separated by commas."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        return [o.strip() for o in value if o.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
