"""Entities added at run time (POST /entities): the runtime catalog, and the Redis stream that carries it
to every worker and replica.

A Redis stream (`ur:entities`; UNIRANK_CATALOG_STREAM) is the runtime catalog's log. POST /entities
appends one entry per accepted batch (the records and their MiniLM title embeddings); each worker's
`CatalogSync` replays the log (its snapshot, then the entries after it: `unirank.core.catalog_log`)
when its bundle loads, then follows it with blocking reads, and applies every entry to its feature
tables, title index and retriever (`RuntimeCatalog`). Once the log holds more than
UNIRANK_CATALOG_COMPACT_ENTRIES entries, one worker folds those older than ten minutes into the snapshot
and trims them, so the log stays bounded however many batches were ever added.
The worker that took the POST answers once its own sync applied the entry, so the entity ranks on the
next request; other workers and replicas follow within a read's round trip. The last applied entry id
is part of every cache key, so no cached ranking predates an entity this worker knows.

An added entity has its content features (kind, genres, year, availability, title, and the text
features when the bundle has them) but no engagement statistics, and the model sees it as its unknown
entity until a bundle trained with it replaces this one; entities the bundle was trained with win.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import orjson
import redis.asyncio as aioredis

from service.core.errors import STORE_ERRORS, count_error
from service.core.schemas import NewEntity
from service.model.retrieval import Retriever
from service.model.text_encoder import TextEncoder
from service.ops.metrics import RUNTIME_ENTITIES
from unirank.core.catalog_log import fold, snapshot_key
from unirank.core.streams import after, id_key
from unirank.core.streams import entry_id as id_of
from unirank.core.tables import FeatureTables, RuntimeEntity
from unirank.core.text_features import EMBEDDING_DIM

log = logging.getLogger("unirank.catalog")


class RuntimeCatalog:
    """The entities added at run time, as this worker applied them to its tables and retriever."""

    def __init__(self, tables: FeatureTables, retriever: Retriever, text_encoder: TextEncoder | None):
        self.tables = tables
        self.retriever = retriever
        self.text_encoder = text_encoder
        self.records: dict[str, dict] = {}  # entity id -> the record as added
        self.generation = ""  # id of the last applied log entry

    @property
    def size(self) -> int:
        return len(self.records)

    def trained(self, entity_ids: list[str]) -> list[str]:
        """Those of entity_ids the bundle was trained with (they cannot be replaced at run time)."""
        return [e for e in entity_ids if self._trained(e)]

    def _trained(self, entity_id: str) -> bool:
        return 0 < self.tables.entity_index.get(entity_id, 0) <= self.tables.n_model_entities

    def ignored(self, entity: NewEntity) -> dict[str, list[str]]:
        """Genres and countries the bundle does not know (the entity is added without them)."""
        known_genres = set(self.tables.genres[1:])
        out = {
            "genres": [g for g in entity.genres if g not in known_genres],
            "countries": [c for c in entity.countries or () if c.upper() not in self.tables.country_index],
        }
        return {k: v for k, v in out.items() if v}

    def embed(self, titles: list[str]) -> np.ndarray | None:
        return self.text_encoder.embed(titles) if self.text_encoder is not None else None

    def apply(self, records: list[dict], embeddings: np.ndarray | None) -> list[int]:
        """Adds (or replaces) runtime entities; returns their indices. Runs on the event loop, between
        requests, so no request sees a half-applied entity. Entities the bundle was trained with win."""
        text = self._text_features(records, embeddings)
        latest = {r["entity_id"]: r for r in records}  # the last record of an id in a batch wins
        accepted = [r for r in latest.values() if not self._trained(r["entity_id"])]
        entities = [
            RuntimeEntity(
                entity_id=r["entity_id"],
                title=r["title"],
                kind=r.get("kind") or "video",
                genres=tuple(r.get("genres") or ()),
                tags=tuple(r.get("tags") or ()),
                release_year=r.get("release_year"),
                countries=None if r.get("countries") is None else tuple(r["countries"]),
                text=text.get(r["entity_id"]),
            )
            for r in accepted
        ]
        indices = self.tables.upsert_runtime_entities(entities)
        self.records.update((r["entity_id"], r) for r in accepted)
        self.retriever.add_fresh(indices)
        RUNTIME_ENTITIES.set(len(self.records))
        return indices

    def _text_features(self, records: list[dict], embeddings: np.ndarray | None) -> dict[str, np.ndarray]:
        projection = self.tables.text_projection
        if projection is None or embeddings is None or len(embeddings) != len(records):
            return {}
        return dict(zip((r["entity_id"] for r in records), projection.apply(embeddings), strict=True))


class CatalogSync:
    """Publishes batches to the log and applies the log, in order, to this worker's catalog."""

    def __init__(
        self,
        client: aioredis.Redis,
        catalog: RuntimeCatalog,
        stream: str,
        block_s: float = 1.0,
        compact_entries: int = 1000,
        compact_after_s: float = 600.0,
    ):
        """compact_entries: fold the log into its snapshot once it holds more entries than this, the entries
        older than compact_after_s (a reader is never that far behind the head, so none misses one)."""
        self.client = client
        self.stream = stream
        self.snapshot = snapshot_key(stream)
        self.catalog = catalog
        self.block_ms = int(block_s * 1000)
        self.compact_entries = compact_entries
        self.compact_after_s = compact_after_s
        self.last_id = "0-0"
        self._applied = asyncio.Condition()
        self._compact_due = 0.0

    async def publish(self, entities: list[NewEntity]) -> str:
        """Appends a batch to the log (with the title embeddings, computed off the event loop); returns its id."""
        records = [e.model_dump() for e in entities]
        embeddings = await asyncio.to_thread(self.catalog.embed, [r["title"] for r in records])
        fields = {"entities": orjson.dumps(records), "embeddings": b"" if embeddings is None else embeddings.tobytes()}
        entry_id = await self.client.xadd(self.stream, fields)
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    async def wait_applied(self, entry_id: str, timeout_s: float) -> bool:
        async with self._applied:
            try:
                await asyncio.wait_for(
                    self._applied.wait_for(lambda: id_key(self.last_id) >= id_key(entry_id)), timeout_s
                )
                return True
            except TimeoutError:
                return False

    async def catch_up(self) -> int:
        """Applies everything already in the log (at bundle load, before the worker is ready)."""
        applied = 0
        while entries := await self._read(block=False):
            applied += await self._apply(entries)
        return applied

    async def run(self) -> None:
        """Follows the log until cancelled (compacting it now and then); Redis errors are counted and retried."""
        while True:
            try:
                await self._apply(await self._read(block=True))
                if time.monotonic() >= self._compact_due:
                    self._compact_due = time.monotonic() + 60.0
                    await self.compact()
            except STORE_ERRORS as exc:
                count_error("catalog", exc)
                log.warning("runtime catalog sync: %s; retrying", exc)
                await asyncio.sleep(1.0)

    async def _read(self, block: bool) -> list:
        """The next entries after what this worker applied; first the snapshot when it is past that (a
        compaction folded entries this worker has not read)."""
        folded = await self.client.hget(self.snapshot, "last_id")
        if folded is not None and id_key(id_of(folded)) > id_key(self.last_id):
            return [(folded, await self.client.hgetall(self.snapshot))]
        reply = await self.client.xread({self.stream: self.last_id}, count=100, block=self.block_ms if block else None)
        return reply[0][1] if reply else []

    async def compact(self, now_s: float | None = None) -> int:
        """Folds the log's entries older than compact_after_s into the snapshot and trims them, once the log
        holds more than compact_entries (one worker of the fleet at a time); returns how many were folded."""
        if await self.client.xlen(self.stream) <= self.compact_entries:
            return 0
        lock = f"{self.snapshot}:lock"
        if not await self.client.set(lock, "1", nx=True, ex=60):
            return 0
        try:
            snapshot = await self.client.hgetall(self.snapshot) or None
            start = "-" if snapshot is None else f"({id_of(snapshot[b'last_id'])}"
            until = str(int(((time.time() if now_s is None else now_s) - self.compact_after_s) * 1000))
            entries = await self.client.xrange(self.stream, min=start, max=until)
            if not entries:
                return 0
            folded = fold(snapshot, entries)
            await self.client.hset(self.snapshot, mapping=folded)
            await self.client.xtrim(self.stream, minid=after(id_of(folded[b"last_id"])), approximate=False)
            log.info("runtime catalog: %d log entries folded into the snapshot", len(entries))
            return len(entries)
        finally:
            await self.client.delete(lock)

    async def _apply(self, entries: list) -> int:
        n = 0
        for raw_id, fields in entries:
            entry_id = id_of(raw_id)
            try:
                n += await self._apply_entry(fields)
            except Exception:  # a malformed entry (written by hand, or by another version) must not stop the follower
                count_error("catalog_bad_entry")
                log.exception("runtime catalog: entry %s skipped", entry_id)
            self.catalog.generation = self.last_id = entry_id
            async with self._applied:
                self._applied.notify_all()
        return n

    async def _apply_entry(self, fields: dict) -> int:
        records = orjson.loads(fields[b"entities"])
        raw = fields.get(b"embeddings", b"")
        embeddings = np.frombuffer(raw, np.float32).reshape(-1, EMBEDDING_DIM) if raw else None
        if (
            embeddings is None
            and self.catalog.text_encoder is not None
            and self.catalog.tables.text_projection is not None
        ):
            embeddings = await asyncio.to_thread(self.catalog.embed, [r["title"] for r in records])
        return len(self.catalog.apply(records, embeddings))
