"""Reading an event log that need not fit in memory: pyarrow's dataset scanner over `events.parquet` or
an `events/` directory of Parquet files (hive partitions allowed), a time slice at a time.

Contract: `EventLog(data_dir)` scans the log once, a few columns at a time in record batches (request
ids, times, users, countries, tasks), and keeps only what is per request or per distinct time: each
request's first time (the split points, exactly as `Dataset.split` computes them), the number of rows
at each time, and the users and countries seen. `chunks(split)` then yields the split's events as
tables of consecutive time slices of about `chunk_rows` rows (rows of one time are never cut apart, so
neither is a request), each sorted as `Dataset.load` sorts: concatenated, they are exactly
`Dataset.load(data_dir).split(split)`. A slice is read with a filter on `timestamp`, which Parquet's
row-group statistics turn into reading only the row groups of that time when the files are in time
order (as `unirank data synth` and `unirank logs sink` write them); other files are scanned per slice.

`sample_users` instead reads a bounded sample of whole users, for jobs that need their data in memory
(`unirank study`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from model_export.data import SORT_KEYS, SPLIT_BOUNDS, Dataset
from unirank.core.schema import EVENT_SCHEMA, TASKS, SchemaError, entities_path, events_path, read_entities, validate

SCAN_COLUMNS = ["request_id", "timestamp", "user_id", "country", "task"]
CHUNK_ROWS = 500_000  # rows of a time slice
IN_MEMORY_ROWS = 2_000_000  # a log of more events is trained and evaluated a time slice at a time


def _dataset(path: Path) -> ds.Dataset:
    return ds.dataset(path, format="parquet", partitioning="hive" if path.is_dir() else None)


def count_events(data_dir: Path | str) -> int:
    """Rows of the log, from the Parquet footers (nothing else is read)."""
    return _dataset(events_path(data_dir)).count_rows()


def _reduce_min(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys, the smallest value of each)."""
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    return keys[first], values[first]


class EventLog:
    def __init__(self, data_dir: Path | str, chunk_rows: int = 500_000, batch_rows: int = 1 << 18):
        self.path = events_path(data_dir)
        self.chunk_rows = chunk_rows
        self.dataset = _dataset(self.path)
        validate(self.dataset.schema.empty_table(), EVENT_SCHEMA, self.path)  # columns and types, before any scan
        self.entities = read_entities(entities_path(data_dir))
        self.users: set[str] = set()
        self.countries: set[str] = set()
        tasks: set[str] = set()
        firsts, times = [], []
        self.rows = 0
        for batch in self.dataset.to_batches(columns=SCAN_COLUMNS, batch_size=batch_rows):
            ts = batch.column("timestamp").cast(pa.timestamp("ms")).cast(pa.int64()).to_numpy()
            firsts.append(_reduce_min(batch.column("request_id").to_numpy(), ts))
            times.append(np.unique(ts, return_counts=True))
            self.users.update(pc.unique(batch.column("user_id")).to_pylist())
            self.countries.update(pc.unique(batch.column("country")).to_pylist())
            tasks.update(pc.unique(batch.column("task")).to_pylist())
            self.rows += batch.num_rows
        if bad := tasks - set(TASKS):
            raise SchemaError(f"{self.path}: column 'task' has unknown values {sorted(bad)}; allowed {TASKS}")
        _, first_ts = _reduce_min(
            *(np.concatenate(c) if firsts else np.zeros(0, np.int64) for c in zip(*firsts, strict=True))
        )
        all_times = np.concatenate([t for t, _ in times]) if times else np.zeros(0, np.int64)
        self.times, inverse = np.unique(all_times, return_inverse=True)
        self.counts = np.bincount(inverse, weights=np.concatenate([c for _, c in times]) if times else None).astype(
            np.int64
        )
        self.cuts = {name: np.quantile(first_ts, [lo, hi]) for name, (lo, hi) in SPLIT_BOUNDS.items()}

    def _in_split(self, split: str, ts: np.ndarray) -> np.ndarray:
        (lo, hi), last = self.cuts[split], SPLIT_BOUNDS[split][1] >= 1.0
        return (ts >= lo) & ((ts <= hi) if last else (ts < hi))

    def split_rows(self, split: str) -> int:
        return int(self.counts[self._in_split(split, self.times)].sum())

    def slices(self, split: str) -> list[tuple[int, int]]:
        """The split's time slices: (first, last) times in ms, both included."""
        inside = self._in_split(split, self.times)
        times, counts = self.times[inside], self.counts[inside]
        if not len(times):
            return []
        slice_of = (np.cumsum(counts) - 1) // self.chunk_rows
        starts = np.flatnonzero(np.r_[True, slice_of[1:] != slice_of[:-1]])
        ends = np.r_[starts[1:], len(times)] - 1
        return [(int(times[a]), int(times[b])) for a, b in zip(starts, ends, strict=True)]

    def chunks(self, split: str) -> Iterator[pa.Table]:
        stored = self.dataset.schema.field("timestamp").type
        for first, last in self.slices(split):
            lo, hi = (pa.scalar(t, pa.timestamp("ms")).cast(stored) for t in (first, last))
            where = (pc.field("timestamp") >= lo) & (pc.field("timestamp") <= hi)
            table = validate(self.dataset.to_table(filter=where, columns=EVENT_SCHEMA.names), EVENT_SCHEMA, self.path)
            yield table.sort_by([(c, "ascending") for c in SORT_KEYS])


def sample_users(data_dir: Path | str, max_events: int, batch_rows: int = 1 << 18) -> tuple[Dataset, dict] | None:
    """About `max_events` of a larger log, read batch by batch: every event of a fixed share of the users
    (an anonymous user's events, user_id "", are sampled by request instead), so each sampled user keeps
    their whole history. The share is by a hash of the id (CRC-32): the same users on every run and in any
    file layout. None when the log has at most `max_events` events (nothing to sample)."""
    path = events_path(data_dir)
    dataset = _dataset(path)
    validate(dataset.schema.empty_table(), EVENT_SCHEMA, path)
    total = dataset.count_rows()
    if total <= max_events:
        return None
    threshold = max_events / total * 2**32
    parts = []
    for batch in dataset.to_batches(columns=list(EVENT_SCHEMA.names), batch_size=batch_rows):
        users = batch.column("user_id").to_numpy(zero_copy_only=False)
        keys = np.where(users != "", users, batch.column("request_id").to_numpy(zero_copy_only=False))
        distinct, inverse = np.unique(keys, return_inverse=True)
        hashes = np.fromiter((zlib.crc32(k.encode()) for k in distinct), np.float64, len(distinct))
        parts.append(pa.Table.from_batches([batch]).filter(pa.array((hashes < threshold)[inverse])))
    events = pa.concat_tables(parts).sort_by([(c, "ascending") for c in SORT_KEYS])
    bad = set(pc.unique(events.column("task")).to_pylist()) - set(TASKS)
    if bad:
        raise SchemaError(f"{path}: column 'task' has unknown values {sorted(bad)}; allowed {TASKS}")
    info = {"events": events.num_rows, "of": total, "users_share": max_events / total, "by": "user (CRC-32 of the id)"}
    return Dataset(events, read_entities(entities_path(data_dir))), info
