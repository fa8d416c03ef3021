"""The models one worker serves: each a loaded bundle under a name, with its ranker and its follower of
the runtime catalog.

Contract: `load_model(name, location, ...)` fetches the bundle (local directory or object-store URL),
checks it (content hash, ONNX inputs, one scored request per task; `ModelLoadError` says why it is
refused) and replays the runtime catalog into it, all off the event loop where it is heavy; nothing
serving changes until the caller installs the result. `ServedModel.close()` stops its follower and its
bundle's batcher (in-flight requests then score alone); the
bundle's memory goes when the last in-flight request that holds it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from service.core.errors import STORE_ERRORS, count_error
from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from service.model.bundle_store import BundleInvalid, BundleMissing, fetch_bundle
from service.model.catalog import CatalogSync
from service.ops.metrics import MODEL_INFO
from service.ranking.ranker import Ranker
from service.store.cache import RankCache

log = logging.getLogger("unirank.models")


class ModelLoadError(ValueError):
    """A bundle that cannot be served; the message says why."""


@dataclass
class ServedModel:
    name: str
    location: str  # as given: a directory or a URL
    bundle: LoadedBundle
    ranker: Ranker
    catalog_sync: CatalogSync
    loaded_at: float = field(default_factory=time.time)
    requests: int = 0
    _follower: asyncio.Task | None = None

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def tasks(self) -> list[str]:
        return list(self.bundle.manifest.get("tasks", []))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "path": self.location,
            "personalization": self.bundle.level,
            "tasks": self.tasks,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "requests_served": self.requests,
        }

    def start_following(self) -> None:
        self._follower = asyncio.create_task(self.catalog_sync.run())
        MODEL_INFO.labels(
            model=self.name,
            version=self.version,
            personalization=self.bundle.level,
            provider=self.bundle.scorer.provider,
        ).set(1)

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        self.bundle.close()
        MODEL_INFO.labels(
            model=self.name,
            version=self.version,
            personalization=self.bundle.level,
            provider=self.bundle.scorer.provider,
        ).set(0)


def _load_and_check(location: str, settings: Settings) -> LoadedBundle:
    directory = fetch_bundle(location, settings.bundle_cache_dir)
    bundle = LoadedBundle.load(directory, settings)
    bundle.check()
    return bundle


async def load_model(
    name: str,
    location: str,
    settings: Settings,
    cache: RankCache,
    redis: aioredis.Redis,
    catalog_redis: aioredis.Redis,
) -> ServedModel:
    """Raises BundleMissing (nothing there yet) or ModelLoadError (something there that cannot serve)."""
    try:
        bundle = await asyncio.to_thread(_load_and_check, location, settings)
    except BundleMissing:
        raise
    except BundleInvalid as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # an unreadable table, a graph onnxruntime refuses, ...
        log.exception("bundle at %s failed to load", location)
        raise ModelLoadError(f"bundle at {location} failed to load: {type(exc).__name__}: {exc}") from None
    sync = CatalogSync(
        catalog_redis,
        bundle.catalog,
        settings.catalog_stream,
        settings.catalog_block_s,
        settings.catalog_compact_entries,
    )
    try:
        added = await sync.catch_up()
        log.info("model %s: %d entities added at run time replayed", name, added)
    except STORE_ERRORS as exc:  # serve the bundle's catalog; the follower keeps trying
        count_error("catalog", exc)
        log.warning("model %s: runtime catalog not replayed yet: %s", name, exc)
    model = ServedModel(name, str(location), bundle, Ranker(bundle, cache, redis, settings, name), sync)
    log.info("model %s (%s) loaded from %s", name, bundle.version, location)
    return model
