"""The answer of one ranking request, and its one encoding as the body of `POST /rank` and the keystroke GETs.

Contract: the ranker builds a `RankAnswer`, the serving layer completes it (request id, experiment,
variant) and the routes send `answer.encode()`; no other code writes a ranking body. The body's members
are exactly `service.api.responses.RankResponse`'s (a test validates served bodies against it). The items
stay the JSON array the ranker encoded (`items`, as the cache and the impression log keep them; `shown`
with display fields when the request asked for them): decoding a cache hit to re-encode it would cost
more than the rest of the answer, so `encode()` embeds them as they are (`orjson.Fragment`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import orjson

CacheStatus = Literal["hit", "miss", "bypass"]


@dataclass(slots=True)
class RankAnswer:
    items: bytes  # the ranked items, a JSON array of {"entity_id", "score"[, "variant"]}
    task: str
    cache: CacheStatus
    model: str | None  # the model that answered; None: two, interleaved
    model_version: str
    level: str = ""  # the personalization applied (the impression log's, not the body's)
    shown: bytes | None = None  # the items with display fields (display: true); None: `items` as they are
    returned: int | None = None  # how many items (None: unknown, for a ranking cached without its count)
    available: int | None = None  # how many candidates they were chosen from
    warnings: list[dict] = field(default_factory=list)
    context: dict | None = None  # the unified context as built (explain: true)
    degraded_reason: str | None = None  # "deadline" or "model_error": answered without the model
    request_id: str = ""
    experiment: str | None = None
    variant: str | None = None
    # a cached ranking's: until when (the cache's in-memory layer's clock) the same request may get this
    # answer again without asking the cache (`service.ranking.repeats`); None: not to be reused. Not encoded.
    fresh_until: float | None = None

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None

    def encode(self) -> bytes:
        """The response body (JSON)."""
        body = {
            "items": orjson.Fragment(self.shown if self.shown is not None else self.items),
            "model": self.model,
            "model_version": self.model_version,
            "task": self.task,
            "cache": self.cache,
            "returned": self.returned,
            "available": self.available,
            "warnings": self.warnings,
            "degraded": self.degraded,
            "degraded_reason": self.degraded_reason,
            "request_id": self.request_id,
            "experiment": self.experiment,
            "variant": self.variant,
        }
        if self.context is not None:
            body["context"] = self.context
        return orjson.dumps(body)

    def encode_around_request_id(self) -> tuple[bytes, bytes]:
        """`encode()` cut where the request id's characters go: `head + rid + tail` is the body of this
        answer with request id `rid`, for an id with nothing to escape in JSON (`new_request_id`'s hex)."""
        marked = _REQUEST_ID_MEMBER % orjson.dumps(self.request_id)
        body = self.encode()
        # inside a JSON string a quote is escaped, and the members before this one have fixed names (the
        # items' included): its first bare occurrence is the member itself, whatever `context` holds after it
        head, found, tail = body.partition(marked)
        if not found:
            raise ValueError("the encoded answer holds no request_id member")
        return head + _REQUEST_ID_MEMBER % b'"', b'"' + tail


_REQUEST_ID_MEMBER = b'"request_id":%s'
