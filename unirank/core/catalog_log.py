"""The runtime catalogue's log (entities added at run time) and its snapshot: the format the service writes
and every reader (the service's workers, `unirank logs export`) reads.

Contract: the log is a Redis stream; each entry holds `entities` (a JSON list of records) and `embeddings`
(their title embeddings, float32 rows in the records' order, or empty). Compaction folds the entries up to
some id into the snapshot, a hash at `snapshot_key(stream)` with the same two fields plus `last_id`, then
trims those entries from the stream. A reader applies the snapshot when its `last_id` is past what it has
read, then the stream after it: the snapshot and the stream together always hold every entity's latest
record. `fold(snapshot, entries)` merges in order (the last record of an id wins); its embeddings are kept
only when every folded record has one (a reader recomputes them otherwise).
"""

from __future__ import annotations

import numpy as np
import orjson

from unirank.core.streams import entry_id
from unirank.core.text_features import EMBEDDING_DIM


def snapshot_key(stream: str) -> str:
    return f"{stream}:snapshot"


def _field(fields: dict, name: str) -> bytes:
    value = fields.get(name.encode(), fields.get(name, b""))
    return value.encode() if isinstance(value, str) else value


def fold(snapshot: dict | None, entries: list[tuple]) -> dict[bytes, bytes]:
    """The snapshot after `entries` ((id, fields), oldest first): fields `entities`, `embeddings`, `last_id`."""
    records: dict[str, tuple[dict, np.ndarray | None]] = {}
    parts = ([(None, snapshot)] if snapshot else []) + list(entries)
    last_id = entry_id(_field(snapshot, "last_id")) if snapshot else "0-0"
    for raw_id, fields in parts:
        try:
            batch = orjson.loads(_field(fields, "entities"))
        except orjson.JSONDecodeError:
            continue  # a malformed entry: readers skip it too
        raw = _field(fields, "embeddings")
        vectors = np.frombuffer(raw, np.float32).reshape(-1, EMBEDDING_DIM) if raw else None
        if vectors is not None and len(vectors) != len(batch):
            vectors = None
        for i, record in enumerate(batch):
            records[record["entity_id"]] = (record, None if vectors is None else vectors[i])
        if raw_id is not None:
            last_id = entry_id(raw_id)
    vectors = [v for _, v in records.values()]
    embeddings = (
        np.stack(vectors).astype(np.float32).tobytes() if vectors and all(v is not None for v in vectors) else b""
    )
    return {
        b"entities": orjson.dumps([r for r, _ in records.values()]),
        b"embeddings": embeddings,
        b"last_id": last_id.encode(),
    }
