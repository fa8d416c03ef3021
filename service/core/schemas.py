"""Request bodies of the HTTP API (pydantic), with the validation rules of /rank, /events and /entities.

Contract: the limits here (ids up to 128 characters, queries up to 200, 1000 candidates, events or
entities per request, event times from 2000 to a day ahead) are the API's; docs/api.md lists them.
Unknown fields are refused (422 naming them): a misspelt field must not silently change behaviour.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, field_validator

from unirank.core.vocab import LevelName, Task, TaskName

# an id: 1-128 characters, none of them a control character (NUL and friends end up in Redis keys and logs)
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
# an id of a body that holds no control character anywhere (`holds_no_control_character`): the length alone
UnescapedId = Annotated[str, Field(min_length=1, max_length=128)]
MAX_CANDIDATES = 1000
MAX_EVENTS = 1000
EARLIEST_TS = 946_684_800.0  # 2000-01-01
LATEST_TS = 4_102_444_800.0  # 2100-01-01


def _whole(value):
    """A JSON number with an integral value (5.0) as the integer it is (JSON Schema's `integer` allows it);
    anything else, a boolean included, is left to the strict integer check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Whole = BeforeValidator(_whole)


# What each task needs, in JSON Schema (the OpenAPI document) as `task_input_problems` checks it.
TASK_INPUTS = {
    "allOf": [
        {
            "if": {"properties": {"task": {"const": "search"}}},
            "then": {"required": ["query"], "properties": {"query": {"type": "string"}}},
        },
        {
            "if": {"properties": {"task": {"const": "more_like_this"}}},
            "then": {"required": ["source_entity_id"], "properties": {"source_entity_id": {"type": "string"}}},
        },
        {
            "if": {"properties": {"personalization": {"enum": ["none", "cluster"]}}, "required": ["personalization"]},
            "then": {"properties": {"personalization_weight": {"type": "null"}}},
        },
    ]
}


class RankRequest(BaseModel):
    # strict: a JSON type other than the documented one (false for a number, "5" for k) is refused;
    # extra="forbid": a misspelt field must not silently change behaviour
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=TASK_INPUTS)

    task: TaskName
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166 alpha-2")]
    user_id: Id | None = None
    query: Annotated[str, Field(max_length=200)] | None = Field(
        None,
        description="search: what is in the box (one without a letter or digit matches nothing: no items, a "
        "warning); other tasks: optional context",
    )
    source_entity_id: Id | None = None
    candidates: Annotated[list[Id], Field(max_length=MAX_CANDIDATES)] | None = None
    k: Annotated[int, Field(ge=1, le=500), Whole] = 20
    personalization: LevelName | None = None
    personalization_weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None,
        description="With personalization 'full': 0 ranks as the user's cluster would, 1 (the default) fully "
        "personalized; between, the scores are blended (how much the user's own history may move a search)",
    )
    explain: bool = False
    display: bool = Field(False, description="Add each item's title, kind, genres and release_year (for rendering)")
    request_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")] | None = Field(
        None, description="Yours (printable ASCII, no spaces), echoed in the response and the logs; else generated"
    )

    def task_input_problems(self) -> list[dict]:
        """Inputs the task needs, as problems naming the field (checked after parsing)."""
        if self.task == Task.SEARCH and self.query is None:
            return [{"field": "query", "message": "search needs a query", "type": "missing"}]
        if self.task == Task.MORE_LIKE_THIS and self.source_entity_id is None:
            return [{"field": "source_entity_id", "message": "more_like_this needs a source entity", "type": "missing"}]
        return []


def holds_no_control_character(raw: bytes) -> bool:
    """Whether no string of a JSON body can hold a control character: JSON writes U+0000-U+001F escaped (a
    backslash), and DEL would be there as itself. One scan of the body instead of the id pattern on each of
    a thousand candidates."""
    return b"\\" not in raw and b"\x7f" not in raw


class UnescapedRankRequest(RankRequest):
    """A `RankRequest` for a body that `holds_no_control_character`: its candidates checked as one list of
    strings of 1-128 characters, without the id pattern per item (which nothing in such a body can fail).
    A body it refuses is validated again as a `RankRequest`, so its errors are exactly that model's."""

    candidates: Annotated[list[UnescapedId], Field(max_length=MAX_CANDIDATES)] | None = None


def _seconds(value):
    """An ISO 8601 time (no zone: UTC) as Unix seconds; anything else is left to the float check."""
    if isinstance(value, str) and not value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("a Unix time in seconds or an ISO 8601 time (2026-11-23T10:15:00Z)") from None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return value


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # as RankRequest

    user_id: Id
    task: TaskName
    entity_id: Id
    action: Literal["impression", "click", "play"]
    query: Annotated[str, Field(max_length=200)] | None = None
    source_entity_id: Id | None = None
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] | None = None
    ts: Annotated[float, Field(ge=EARLIEST_TS, le=LATEST_TS), BeforeValidator(_seconds)] | None = Field(
        None,
        description="When it happened: Unix time in seconds, or an ISO 8601 string (2026-11-23T10:15:00Z; no "
        "zone: UTC); the server's clock when missing. From 2000-01-01 to 2100; a time ahead of the server's "
        "clock (a client's fast clock) is taken as the server's.",
    )
    request_id: Id | None = Field(
        None, description="The /rank answer this click or play is on (its request_id), to credit it exactly"
    )
    position: Annotated[int, Field(ge=0, le=999), Whole] | None = Field(
        None, description="The item's 0-based position in that answer"
    )

    @field_validator("ts")
    @classmethod
    def not_ahead(cls, ts: float | None) -> float | None:
        return None if ts is None else min(ts, time.time())


class EventBatch(RootModel[Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS)]]):
    pass


MAX_NEW_ENTITIES = 1000
# a letter or digit search can match: ASCII and the Latin-1/Extended letters that normalize to them. The
# rule is this pattern itself (not the normalizer), so the OpenAPI document states exactly what is refused.
TITLE_WORDS = r"[0-9A-Za-z\u00C0-\u024F]"


class NewEntity(BaseModel):
    """An entity added at run time (POST /entities); the fields of the catalog's entities table."""

    model_config = ConfigDict(extra="forbid", strict=True)  # as RankRequest

    entity_id: Id
    title: Annotated[str, Field(min_length=1, max_length=300, pattern=TITLE_WORDS)] = Field(
        description="With at least one Latin letter or digit (what search matches on)"
    )
    kind: Literal["video", "game"] = "video"
    genres: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=20)] = []
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=50)] = Field(
        [], description="Catalogue tags: search finds the entity by them as by its genres"
    )
    release_year: Annotated[int, Field(ge=1870, le=2100), Whole] | None = Field(
        None, description="unset: the catalog's median year"
    )
    countries: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")]], Field(max_length=300)] | None = Field(
        None, description="ISO 3166 alpha-2 codes where it is available; unset: everywhere"
    )


class NewEntityBatch(RootModel[Annotated[list[NewEntity], Field(min_length=1, max_length=MAX_NEW_ENTITIES)]]):
    pass


class ModelLoad(BaseModel):
    """POST /admin/models: load the bundle at `path` (a directory, or an s3:// / gs:// URL) as `name`."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    path: Annotated[str, Field(min_length=1, max_length=1024)]
