"""What a frontend shows for an entity: its catalog record (GET /entities) and the display fields that
/rank adds to each item with `"display": true` (title, kind, genres, release_year: the names GET /entities
uses; `year`, the same value, is kept for one release for frontends written against 0.1 and then removed).

Contract: `Entities(tables, catalog).record(entity_id)` is the entity's catalog record with
`added_at_run_time`, or None when unknown (trained entities first; an id the model was trained with
cannot be replaced at run time). `decorate(items)` takes the items array as /rank encodes it and returns
it with each known item's display fields (`decorate_items`: the same on decoded items); the records of
trained entities are built once per bundle.
"""

from __future__ import annotations

import orjson

from service.model.catalog import RuntimeCatalog
from unirank.core.tables import FeatureTables

DISPLAY_FIELDS = ("title", "kind", "genres", "release_year", "year")


def display_fields(record: dict) -> dict:
    return {
        "title": record["title"],
        "kind": record["kind"],
        "genres": list(record.get("genres") or []),
        "release_year": record.get("release_year"),
        "year": record.get("release_year"),  # deprecated: release_year
    }


class Entities:
    def __init__(self, tables: FeatureTables, catalog: RuntimeCatalog):
        self.tables = tables
        self.catalog = catalog
        self._trained: dict[str, dict] | None = None

    def _trained_records(self) -> dict[str, dict]:
        if self._trained is None:  # built on first use: a large catalog costs its memory only when asked
            self._trained = {r["entity_id"]: {"tags": []} | r for r in self.tables.entity_table.to_pylist()}
        return self._trained

    def record(self, entity_id: str) -> dict | None:
        idx = self.tables.entity_index.get(entity_id)
        if idx is None:
            return None
        if idx > self.tables.n_model_entities:
            added = self.catalog.records.get(entity_id)
            return None if added is None else added | {"added_at_run_time": True}
        return self._trained_records()[entity_id] | {"added_at_run_time": False}

    def decorate_items(self, items: list[dict]) -> list[dict]:
        """The items, each with the display fields added in place (an unknown id gets none)."""
        for item in items:
            record = self.record(item["entity_id"])
            if record is not None:
                item.update(display_fields(record))
        return items

    def decorate(self, items: bytes) -> bytes:
        """`decorate_items` on items encoded as /rank encodes them."""
        return orjson.dumps(self.decorate_items(orjson.loads(items)))
