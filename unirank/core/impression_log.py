"""The served-impression log and the feedback joined to it: the records the service writes into Redis
streams and the offline tools (`unirank logs`, `unirank experiment report`) read back.

Contract:
- impressions stream (every /rank answer, cache hits included; one entry per batch a worker flushed),
  field `a`: the batch as one Arrow IPC record batch message of `IMPRESSION_SCHEMA` — a column per field (`rid`,
  `ts` (ms), `model`, `version`, `experiment`, `variant`, `task`, `country`, `user`, `query`, `source`,
  `level`) and `items`, each answer's items as the JSON array the service served
  (`[{"entity_id", "score"[, "variant"]}]`: an item's position is its index; interleaved items carry the
  variant whose team contributed them). Writing it costs a worker no per-item work and a few list
  comprehensions per batch (`encode_impressions`), not a JSON object per answer. Entries of earlier
  versions (field `b`: a JSON array of records with the same members) are still read (`decode_entry`);
- feedback stream (one entry per click or play that named its request), field `f`: JSON
  `{"rid", "entity", "action", "position", "user", "ts" (ms)}`;
- a click or play is credited to the impression with its `rid` and `entity` (the position only
  cross-checks); stream ids are millisecond timestamps, so `--since/--until` select by time.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pyarrow as pa

IMPRESSIONS_STREAM = "ur:impressions"
FEEDBACK_STREAM = "ur:feedback"
REQUEST_KEY_PREFIX = "ur:req:"  # per request in an experiment: its experiment, variant and interleaving teams
ENGAGED = ("click", "play")


def request_key(request_id: str) -> str:
    return REQUEST_KEY_PREFIX + request_id


@dataclass(frozen=True)
class Impression:
    rid: str
    ts: int
    model: str | None
    version: str
    experiment: str | None
    variant: str | None
    task: str
    country: str
    user: str | None
    query: str | None
    source: str | None
    level: str
    items: list[dict]

    @classmethod
    def from_dict(cls, d: dict) -> Impression:
        return cls(
            d["rid"],
            d["ts"],
            d.get("model"),
            d.get("version", ""),
            d.get("experiment"),
            d.get("variant"),
            d["task"],
            d.get("country") or "",
            d.get("user"),
            d.get("query"),
            d.get("source"),
            d.get("level", ""),
            d.get("items") or [],
        )


@dataclass(frozen=True)
class Feedback:
    rid: str
    entity: str
    action: str
    position: int | None
    user: str
    ts: int

    @classmethod
    def decode(cls, raw: bytes) -> Feedback:
        d = orjson.loads(raw)
        return cls(d["rid"], d["entity"], d["action"], d.get("position"), d.get("user", ""), d["ts"])

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "rid": self.rid,
                "entity": self.entity,
                "action": self.action,
                "position": self.position,
                "user": self.user,
                "ts": self.ts,
            }
        )


def decode_batch(raw: bytes) -> list[Impression]:
    """The records of one impressions stream entry."""
    return [Impression.from_dict(d) for d in orjson.loads(raw)]


IMPRESSION_SCHEMA = pa.schema(
    [
        ("rid", pa.string()),
        ("ts", pa.int64()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("experiment", pa.string()),
        ("variant", pa.string()),
        ("task", pa.string()),
        ("country", pa.string()),
        ("user", pa.string()),
        ("query", pa.string()),
        ("source", pa.string()),
        ("level", pa.string()),
        ("items", pa.binary()),
    ]
)


def encode_impressions(columns: dict[str, list]) -> memoryview:
    """One stream entry's field `a`: the columns (one list per field of IMPRESSION_SCHEMA, one value per
    answer) as one Arrow IPC record batch message (its schema is IMPRESSION_SCHEMA: a change of schema
    takes a new field name), without a copy."""
    arrays = [pa.array(columns[f.name], f.type) for f in IMPRESSION_SCHEMA]
    return memoryview(pa.RecordBatch.from_arrays(arrays, schema=IMPRESSION_SCHEMA).serialize())


def decode_entry(fields: dict) -> list[Impression]:
    """The records of one impressions stream entry (this version's Arrow batch, or an earlier JSON one)."""
    if b"a" in fields:
        batch = pa.ipc.read_record_batch(pa.py_buffer(fields[b"a"]), IMPRESSION_SCHEMA)
        return [Impression.from_dict(row | {"items": orjson.loads(row["items"])}) for row in batch.to_pylist()]
    return decode_batch(fields[b"b"])
