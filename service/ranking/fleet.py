"""The models of one worker and the routing between them, kept in step with the fleet's control document.

Contract:
- at start the worker loads its start-up bundle as model `default` (retrying while it is missing),
  then every model of the control document; it polls the document and converges on it (loads what is
  new or changed, unloads what was removed, applies the routing once every model it names is loaded
  here), reporting what it holds for the admin calls that wait on it;
- `add_model` / `remove_model` / `set_routing` are the admin operations: checked first (a refused
  call changes nothing), written to the document, applied here at once, and (`add_model`) answered
  only when every live worker of this replica holds the model;
- a request takes its model from `routing` and `models` at its start and keeps it: switching the
  default, loading and unloading never touch a request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis

from service.core.errors import (
    STORE_ERRORS,
    InvalidInput,
    NotFound,
    NotReady,
    NotReadyEverywhere,
    RoutedModel,
    count_error,
)
from service.core.rollout import Routing
from service.core.settings import Settings
from service.model.bundle_store import BundleMissing
from service.ops import heap
from service.ranking.ranker import Ranker
from service.ranking.repeats import RepeatedRequests
from service.ranking.served_model import ModelLoadError, ServedModel, load_model
from service.store.cache import RankCache
from service.store.control import DEFAULT_MODEL, ControlDoc, ControlStore

log = logging.getLogger("unirank.fleet")


class Fleet:
    def __init__(
        self,
        settings: Settings,
        cache: RankCache,
        redis: aioredis.Redis,
        catalog_redis: aioredis.Redis,
        control: ControlStore,
    ):
        self.settings = settings
        self.cache = cache
        self.redis = redis
        self.catalog_redis = catalog_redis
        self.control = control
        self.models: dict[str, ServedModel] = {}
        self.routing = Routing()
        self.load_error = "loading"
        self.applied_version = -1  # of the control document
        self.failed: dict[
            str, dict
        ] = {}  # model -> {"version", "error"}: did not load here (not retried until it changes)
        self._shadow_rankers: dict[str, Ranker] = {}
        # repeated requests are answered for as long as the cache's in-memory layer would serve their ranking
        clock = cache.local.clock if cache.local is not None else time.monotonic
        self.repeats = RepeatedRequests(settings.local_cache_size if cache.local is not None else 0, clock)
        self._lock = asyncio.Lock()  # one reconciliation or admin change at a time in this worker
        # set once the start-up model loaded (or its first try failed) and the control document was read once:
        # the worker serves the same models as its siblings from its first request (AppState.start waits)
        self.settled = asyncio.Event()

    # ---- what requests read ----------------------------------------------------------------------

    @property
    def default(self) -> ServedModel | None:
        return self.models.get(self.routing.default)

    def serving(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise NotReady(f"model '{name}' is not loaded here yet: {self.load_error or 'loading'}")
        return model

    def shadow_ranker(self, name: str) -> Ranker | None:
        model = self.models.get(name)
        if model is None:
            return None
        ranker = self._shadow_rankers.get(name)
        if ranker is None or ranker.bundle is not model.bundle:
            ranker = Ranker(model.bundle, self.cache, self.redis, self.settings, name, observe=False)
            self._shadow_rankers[name] = ranker
        return ranker

    # ---- life --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Loads the start-up model, then follows the control document until cancelled."""
        with contextlib.suppress(*STORE_ERRORS):
            await self._report()  # known to the replica before it holds anything
        await self._load_startup_model()
        while True:
            try:
                async with self._lock:  # read under the lock: a document read before an admin change
                    doc = await self.control.read()  # applied it would otherwise undo that change here
                    if doc.version != self.applied_version:
                        await self._reconcile(doc)
                await self._report()
            except STORE_ERRORS as exc:  # serve what is loaded; try again next poll
                count_error("control", exc)
            self.settled.set()
            await asyncio.sleep(self.settings.control_poll_s)

    async def close(self) -> None:
        for model in list(self.models.values()):
            await model.close()
        with contextlib.suppress(*STORE_ERRORS):
            await self.control.forget_me()

    async def _load_startup_model(self) -> None:
        location = self.settings.bundle
        warned = False
        while DEFAULT_MODEL not in self.models:
            try:
                model = await self._load(DEFAULT_MODEL, location)
            except BundleMissing as exc:
                self.load_error = str(exc)
                if not warned:
                    log.warning("%s; /readyz answers 503 until one appears", exc)
                    warned = True
                self.settled.set()  # serve (503) while waiting for it
                await asyncio.sleep(self.settings.bundle_poll_s)
                continue
            except ModelLoadError as exc:
                self.load_error = str(exc)
                self.settled.set()
                await asyncio.sleep(max(self.settings.bundle_poll_s, 5.0))
                continue
            self._install(model)
        self.load_error = ""

    async def _load(self, name: str, location: str) -> ServedModel:
        return await load_model(name, location, self.settings, self.cache, self.redis, self.catalog_redis)

    def _install(self, model: ServedModel) -> None:
        old = self.models.get(model.name)
        self.models[model.name] = model
        model.start_following()
        if old is not None and old is not model:
            asyncio.create_task(self._close(old))
        else:
            heap.settle()
        self.failed.pop(model.name, None)

    @staticmethod
    async def _close(model: ServedModel) -> None:
        await model.close()
        heap.settle()  # after it let go: a replaced model's reference cycles are collected, the new one frozen

    async def _uninstall(self, name: str) -> None:
        model = self.models.pop(name, None)
        self._shadow_rankers.pop(name, None)
        if model is not None:
            await model.close()
            heap.settle()
            log.info("model %s (%s) unloaded", name, model.version)

    async def _reconcile(self, doc: ControlDoc) -> None:
        converged = True
        for name, entry in doc.models.items():
            have = self.models.get(name)
            if have is not None and have.version == entry["version"] and have.location == entry["path"]:
                continue
            if self.failed.get(name, {}).get("version") == entry["version"]:
                converged = False  # failed here already; retried when the document changes
                continue
            try:
                self._install(await self._load(name, entry["path"]))
            except (BundleMissing, ModelLoadError) as exc:
                self.failed[name] = {"version": entry["version"], "error": str(exc)}
                log.error("model %s from the control document did not load here: %s", name, exc)
                converged = False
        for name in [n for n in self.models if n != DEFAULT_MODEL and n not in doc.models]:
            await self._uninstall(name)
        if doc.routing.models() <= set(self.models):
            self.routing = doc.routing
        else:
            converged = False
        if converged:
            self.applied_version = doc.version

    async def _report(self) -> None:
        versions = {name: m.version for name, m in self.models.items()}
        await self.control.report(self.applied_version, versions, self.failed)

    # ---- admin operations -------------------------------------------------------------------------

    async def add_model(self, name: str, location: str) -> dict:
        if name == DEFAULT_MODEL:
            message = "'default' is each replica's start-up bundle (UNIRANK_BUNDLE); load yours under another name"
            raise InvalidInput([{"field": "name", "message": message, "type": "reserved"}])
        async with self._lock:
            try:
                model = await self._load(name, location)
            except (BundleMissing, ModelLoadError) as exc:
                raise InvalidInput([{"field": "path", "message": str(exc), "type": "bundle"}]) from None
            entry = {"path": location, "version": model.version, "tasks": model.tasks}
            await self.control.update(lambda d: d.models.__setitem__(name, entry))
            self._install(model)
            await self._report()
        await self._wait_replica_holds(name, model.version)
        return model.describe()

    async def remove_model(self, name: str) -> None:
        def change(doc: ControlDoc) -> None:
            if name == DEFAULT_MODEL:
                raise RoutedModel("'default' is the replica's start-up bundle; route elsewhere instead")
            if name not in doc.models:
                raise NotFound(f"no model '{name}' is loaded")
            if name in doc.routing.models():
                raise RoutedModel(
                    f"model '{name}' is in the routing ({doc.routing.model_dump_json()}); route elsewhere first"
                )
            del doc.models[name]

        async with self._lock:
            doc = await self.control.update(change)
            await self._reconcile(doc)
            await self._report()
        await self._wait_replica_applies(doc.version)

    async def set_routing(self, routing: Routing) -> Routing:
        def change(doc: ControlDoc) -> None:
            tasks_of = {name: entry.get("tasks", []) for name, entry in doc.models.items()}
            if DEFAULT_MODEL in self.models:
                tasks_of[DEFAULT_MODEL] = self.models[DEFAULT_MODEL].tasks
            if problems := routing.problems(tasks_of):
                raise InvalidInput(problems)
            doc.routing = routing

        async with self._lock:
            doc = await self.control.update(change)
            await self._reconcile(doc)
            await self._report()
        await self._wait_replica_applies(doc.version)
        return routing

    async def _wait_replica_holds(self, name: str, version: str) -> None:
        """Until every live worker of this replica reports the model (or one reports it failed)."""
        deadline = time.monotonic() + self.settings.model_ready_timeout_s
        fresh = max(5.0, 4 * self.settings.control_poll_s)
        while True:
            reports = [r for r in await self.control.reports(fresh) if r.replica == self.control.replica]
            if failed := [r for r in reports if r.failed.get(name, {}).get("version") == version]:
                why = f"worker {failed[0].worker}: {failed[0].failed[name]['error']}"
                raise InvalidInput([{"field": "path", "message": why, "type": "bundle"}])
            holding = [r.worker for r in reports if r.models.get(name) == version]
            if len(holding) >= self.settings.workers and len(holding) == len(reports):
                return
            if time.monotonic() > deadline:
                message = (
                    f"model '{name}' is loaded on {len(holding)} of the replica's {self.settings.workers} "
                    f"workers so far ({', '.join(holding)})"
                )
                raise NotReadyEverywhere(message)
            await asyncio.sleep(0.05)

    async def _wait_replica_applies(self, version: int) -> None:
        """Until every live worker of this replica applied the document's `version` (bounded: a worker that
        cannot, e.g. one failing to load a model, must not hold the call; it converges later or reports why)."""
        deadline = time.monotonic() + max(2.0, 10 * self.settings.control_poll_s)
        fresh = max(5.0, 4 * self.settings.control_poll_s)
        while time.monotonic() < deadline:
            reports = [r for r in await self.control.reports(fresh) if r.replica == self.control.replica]
            if all(r.version >= version for r in reports):
                return
            await asyncio.sleep(0.02)

    def describe(self) -> list[dict]:
        return [m.describe() | {"routed": m.name in self.routing.models()} for m in self.models.values()]
