"""A worker's memo of repeated requests: the same bytes asked again while their cached ranking is live.

Contract: `remember(raw, request, answer, model, routing)` keeps a served answer under the request's raw
bytes (a /rank body, or a keystroke GET's path and query string) when that answer came from the ranking
cache's in-memory layer (`answer.fresh_until` is set) and the request is small; `lookup(raw, routing,
models)` gives it back while all of these still hold, and forgets it otherwise:
- the cache's in-memory layer would still serve that ranking (`fresh_until`, the layer's own expiry of
  it: the memo never serves a ranking older than the layer would);
- the routing is the same object (a change replaces it) and names no experiment, and its default is
  still the model that answered (a reload replaces the model);
- that model's cache version (its bundle version and runtime catalog generation) is unchanged.
The same bytes parse to the same request, and a cached ranking depends on nothing else, so the answer
is the one the full path would give: what a repeat skips is parsing, the unified context, the cache key
and look-up and the answer's assembly, most of a keystroke cache hit's own work. Callers still give each
repeat its own request id, impression record and metrics (`service.ranking.serving.serve_repeat`).
At most `size` entries, the oldest dropped first.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

from service.core.answer import RankAnswer
from service.core.rollout import Routing
from service.core.schemas import RankRequest
from service.ranking.served_model import ServedModel
from service.store import impressions

MAX_RAW_BYTES = 1024  # a keystroke's body is ~100 bytes; larger ones rarely repeat and would crowd the memo


class Repeat:
    """One remembered answer; its body around the request id and its impression row are prepared at its
    first repeat (most remembered requests are never asked again)."""

    __slots__ = ("request", "answer", "model", "routing", "cache_version", "_parts", "_row")

    def __init__(self, request: RankRequest, answer: RankAnswer, model: ServedModel, routing: Routing):
        self.request = request
        self.answer = answer  # as first served (its request id is replaced on every repeat)
        self.model = model
        self.routing = routing
        self.cache_version = model.bundle.cache_version
        self._parts: tuple[bytes, bytes] | None = None
        self._row: tuple | None = None

    def body(self, request_id: str) -> bytes:
        """The response body with this request id (hex: nothing to escape)."""
        if self._parts is None:  # served from memory: a hit, whatever the first answer was
            self._parts = dataclasses.replace(self.answer, cache="hit").encode_around_request_id()
        head, tail = self._parts
        return head + request_id.encode() + tail

    def impression(self, request_id: str) -> tuple:
        """The impression log's row for this answer served now under this request id."""
        if self._row is None:
            self._row = impressions.row(self.request, self.answer)
        return impressions.served_again(self._row, request_id)


class RepeatedRequests:
    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic):
        self.size = size
        self.clock = clock
        self._entries: dict[bytes, Repeat] = {}

    def remember(
        self, raw: bytes, request: RankRequest, answer: RankAnswer, model: ServedModel, routing: Routing
    ) -> None:
        if (
            self.size <= 0
            or answer.fresh_until is None
            or answer.degraded
            or len(raw) > MAX_RAW_BYTES
            or request.request_id is not None  # a client's own ids do not repeat
            or routing.experiment is not None  # the arm may depend on the request id
        ):
            return
        entries = self._entries
        entries.pop(raw, None)
        while len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[raw] = Repeat(request, answer, model, routing)

    def lookup(self, raw: bytes, routing: Routing, models: Mapping[str, ServedModel]) -> Repeat | None:
        repeat = self._entries.get(raw)
        if repeat is None:
            return None
        if (
            repeat.answer.fresh_until <= self.clock()  # on the cache's in-memory layer's clock
            or repeat.routing is not routing
            or models.get(routing.default) is not repeat.model
            or repeat.model.bundle.cache_version != repeat.cache_version
        ):
            del self._entries[raw]
            return None
        return repeat

    def __len__(self) -> int:
        return len(self._entries)
