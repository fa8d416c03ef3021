"""The fleet's model list and routing, kept in Redis so every worker, replica and restart converges on it.

Contract: one JSON document under one key (`UNIRANK_CONTROL_KEY`):
`{"version": n, "models": {name: {"path", "version", "tasks"}}, "routing": Routing}`; every change is
a read-modify-write under WATCH that increments `version`. Each worker polls it (`UNIRANK_CONTROL_POLL_S`)
and reports what it holds in a hash (`<key>:workers`, one field per worker: `{replica}/{pid}` ->
`{"ts", "version", "models": {name: bundle version}, "failed": {name: {"version", "error"}}}`), which is how the worker
that took an admin call knows when every worker of its replica has a model ready. The model named
`default` is not in the document: it is each replica's start-up bundle (UNIRANK_BUNDLE).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from service.core.rollout import Routing

DEFAULT_MODEL = "default"


@dataclass
class ControlDoc:
    version: int = 0
    models: dict[str, dict] = field(default_factory=dict)
    routing: Routing = field(default_factory=Routing)

    @classmethod
    def parse(cls, raw: bytes | None) -> ControlDoc:
        if not raw:
            return cls()
        d = orjson.loads(raw)
        return cls(d.get("version", 0), d.get("models", {}), Routing.model_validate(d.get("routing") or {}))

    def dump(self) -> bytes:
        return orjson.dumps({"version": self.version, "models": self.models, "routing": self.routing.model_dump()})


@dataclass(frozen=True)
class WorkerReport:
    worker: str  # "{replica}/{pid}"
    ts: float
    version: int
    models: dict[str, str]
    failed: dict[str, dict]  # model -> {"version", "error"}

    @property
    def replica(self) -> str:
        return self.worker.rsplit("/", 1)[0]


class ControlStore:
    def __init__(self, client: aioredis.Redis, key: str, replica: str):
        self.client = client
        self.key = key
        self.workers_key = f"{key}:workers"
        self.worker = f"{replica}/{os.getpid()}"
        self.replica = replica

    async def read(self) -> ControlDoc:
        return ControlDoc.parse(await self.client.get(self.key))

    async def update(self, change: Callable[[ControlDoc], None]) -> ControlDoc:
        """Applies `change` to the current document and stores it with the next version (retried when
        another writer got there first). `change` may raise to abort; nothing is written then."""
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.key)
                    doc = ControlDoc.parse(await pipe.get(self.key))
                    change(doc)
                    doc.version += 1
                    pipe.multi()
                    pipe.set(self.key, doc.dump())
                    await pipe.execute()
                    return doc
                except WatchError:
                    continue

    async def report(self, version: int, models: dict[str, str], failed: dict[str, dict]) -> None:
        value = {"ts": time.time(), "version": version, "models": models, "failed": failed}
        await self.client.hset(self.workers_key, self.worker, orjson.dumps(value))

    async def reports(self, fresh_s: float) -> list[WorkerReport]:
        """The workers that reported within `fresh_s` (stale entries of stopped workers are removed)."""
        now, out, stale = time.time(), [], []
        for worker, raw in (await self.client.hgetall(self.workers_key)).items():
            r = orjson.loads(raw)
            name = worker.decode() if isinstance(worker, bytes) else worker
            if now - r["ts"] > max(fresh_s * 20, 60.0):
                stale.append(name)
            elif now - r["ts"] <= fresh_s:
                out.append(WorkerReport(name, r["ts"], r["version"], r["models"], r.get("failed", {})))
        if stale:
            await self.client.hdel(self.workers_key, *stale)
        return out

    async def forget_me(self) -> None:
        await self.client.hdel(self.workers_key, self.worker)
