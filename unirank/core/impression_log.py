"""The served-impression log and the feedback joined to it: the records the service writes into Redis
streams and the offline tools (`unirank logs`, `unirank experiment report`) read back.

Contract:
- impressions stream (every /rank answer, cache hits included; one entry per batch a worker flushed),
  field `b`: a JSON array of records `{"rid", "ts" (ms), "model", "version", "experiment", "variant",
  "task", "country", "user", "query", "source", "level", "items": [{"entity_id", "score"[, "variant"]}]}`
  — an item's position is its index; interleaved items carry the variant whose team contributed them;
- feedback stream (one entry per click or play that named its request), field `f`: JSON
  `{"rid", "entity", "action", "position", "user", "ts" (ms)}`;
- a click or play is credited to the impression with its `rid` and `entity` (the position only
  cross-checks); stream ids are millisecond timestamps, so `--since/--until` select by time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import orjson

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


class ServedImpression(NamedTuple):
    """One answer as the service records it: the items as the service already encoded them (a JSON array),
    so that recording costs no encoding on the request's path."""

    rid: str
    ts: int  # ms
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
    items: bytes

    def encode(self) -> bytes:
        """The record of the impressions stream (the items embedded as they are, not re-encoded)."""
        return orjson.dumps(self._asdict() | {"items": orjson.Fragment(self.items)})
