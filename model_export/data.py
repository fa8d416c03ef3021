"""Loading a dataset in the event schema, the time-based split, and request-level views of it.

Splits follow request time: `feature` (the first half: every statistic, the clusters and the
collaborative-filtering model are computed here only), `fit` (the model trains here), `validation`
and `test`. Keeping statistics out of the rows the model fits on avoids target leakage through
click counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirank.core.schema import entities_path, events_path, read_entities, read_events

SORT_KEYS = ("timestamp", "request_id", "target_entity_id", "clicked", "played")
SPLIT_BOUNDS = {"feature": (0.0, 0.5), "fit": (0.5, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}


@dataclass
class Dataset:
    events: pa.Table
    entities: pa.Table

    @classmethod
    def load(cls, data_dir: Path | str) -> Dataset:
        events = read_events(events_path(data_dir))
        # a total order: the same events in any row order or file layout load to the same table
        events = events.sort_by([(c, "ascending") for c in SORT_KEYS])
        return cls(events, read_entities(entities_path(data_dir)))

    def split(self, name: str) -> pa.Table:
        """Rows of one split; whole requests only (a request's impressions share a timestamp)."""
        lo, hi = SPLIT_BOUNDS[name]
        ts = self.events.column("timestamp").cast(pa.int64()).to_numpy()
        req = self.events.column("request_id").to_numpy()
        _, first = np.unique(req, return_index=True)
        cut = np.quantile(ts[first], [lo, hi])
        mask = (ts >= cut[0]) & ((ts < cut[1]) if hi < 1.0 else (ts <= cut[1]))
        return self.events.filter(pa.array(mask))


@dataclass
class Requests:
    """Columnar view: one entry per request (contexts) and per impression (rows)."""

    request_id: np.ndarray
    task: np.ndarray
    country: np.ndarray
    user_id: np.ndarray
    query: np.ndarray  # object, None where null
    source_entity_id: np.ndarray
    timestamp: np.ndarray  # int64 ms
    row_request: np.ndarray  # impression -> position in the request arrays
    target_entity_id: np.ndarray
    clicked: np.ndarray
    played: np.ndarray

    @classmethod
    def from_events(cls, events: pa.Table) -> Requests:
        events = events.sort_by("request_id")
        req = events.column("request_id").to_numpy()
        uniq, first, inverse = np.unique(req, return_index=True, return_inverse=True)

        def col(name):
            return np.asarray(events.column(name).to_numpy(zero_copy_only=False), dtype=object)[first]

        return cls(
            request_id=uniq,
            task=col("task"),
            country=col("country"),
            user_id=col("user_id"),
            query=col("query"),
            source_entity_id=col("source_entity_id"),
            timestamp=events.column("timestamp").cast(pa.int64()).to_numpy()[first],
            row_request=inverse.astype(np.int64),
            target_entity_id=np.asarray(events.column("target_entity_id").to_numpy(zero_copy_only=False), dtype=object),
            clicked=events.column("clicked").to_numpy(zero_copy_only=False).astype(np.float32),
            played=events.column("played").to_numpy(zero_copy_only=False).astype(np.float32),
        )

    def __len__(self) -> int:
        return len(self.request_id)

    def rows_for_task(self, task: str) -> np.ndarray:
        return np.flatnonzero(self.task[self.row_request] == task)


def clicks_table(events: pa.Table) -> pa.Table:
    return events.filter(pc.field("clicked"))
