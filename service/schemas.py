"""Request bodies of the HTTP API (pydantic), with the validation rules of /rank, /events and /entities.

Contract: the limits here (ids up to 128 characters, queries up to 200, 1000 candidates, events or
entities per request, event times from 2000 to a day ahead) are the API's; the README lists them.
Unknown fields are refused (422 naming them): a misspelt field must not silently change behaviour.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, field_validator

from unirank.core.text import normalize

Task = Literal["search", "prequery", "more_like_this"]
# an id: 1-128 characters, none of them a control character (NUL and friends end up in Redis keys and logs)
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Personalization = Literal["none", "cluster", "full"]
MAX_CANDIDATES = 1000
MAX_EVENTS = 1000
EARLIEST_TS = 946_684_800.0  # 2000-01-01
FUTURE_SLACK_S = 86_400.0


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field must not silently change behaviour

    task: Task
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166 alpha-2")]
    user_id: Id | None = None
    query: Annotated[str, Field(max_length=200)] | None = None
    source_entity_id: Id | None = None
    candidates: Annotated[list[Id], Field(max_length=MAX_CANDIDATES)] | None = None
    k: Annotated[int, Field(ge=1, le=500)] = 20
    personalization: Personalization | None = None
    personalization_weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None,
        description="With personalization 'full': 0 ranks as the user's cluster would, 1 (the default) fully "
        "personalized; between, the scores are blended (how much the user's own history may move a search)",
    )
    explain: bool = False
    request_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")] | None = Field(
        None, description="Yours (printable ASCII, no spaces), echoed in the response and the logs; else generated"
    )

    def task_input_problems(self) -> list[dict]:
        """Inputs the task needs, as problems naming the field (checked after parsing)."""
        if self.task == "search" and not normalize(self.query):
            return [
                {
                    "field": "query",
                    "message": "search needs a query with at least one letter or digit",
                    "type": "missing",
                }
            ]
        if self.task == "more_like_this" and self.source_entity_id is None:
            return [{"field": "source_entity_id", "message": "more_like_this needs a source entity", "type": "missing"}]
        return []


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
    model_config = ConfigDict(extra="forbid")  # a misspelt field must not silently change behaviour

    user_id: Id
    task: Task
    entity_id: Id
    action: Literal["impression", "click", "play"]
    query: Annotated[str, Field(max_length=200)] | None = None
    source_entity_id: Id | None = None
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] | None = None
    ts: Annotated[float, BeforeValidator(_seconds)] | None = Field(
        None,
        description="When it happened: Unix time in seconds, or ISO 8601 (2026-11-23T10:15:00Z; no zone: UTC); "
        "the server's clock when missing. From 2000-01-01 to a day ahead of the server's clock.",
    )
    request_id: Id | None = Field(
        None, description="The /rank answer this click or play is on (its request_id), to credit it exactly"
    )
    position: Annotated[int, Field(ge=0, le=999)] | None = Field(
        None, description="The item's 0-based position in that answer"
    )

    @field_validator("ts")
    @classmethod
    def sane_time(cls, ts: float | None) -> float | None:
        if ts is not None and not EARLIEST_TS <= ts <= time.time() + FUTURE_SLACK_S:
            raise ValueError("must be between 2000-01-01 and a day ahead of now (Unix seconds or ISO 8601)")
        return ts


class EventBatch(RootModel[Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS)]]):
    pass


MAX_NEW_ENTITIES = 1000


class NewEntity(BaseModel):
    """An entity added at run time (POST /entities); the fields of the catalog's entities table."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field must not silently change behaviour

    entity_id: Id
    title: Annotated[str, Field(min_length=1, max_length=300)]
    kind: Literal["video", "game"] = "video"
    genres: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=20)] = []
    release_year: Annotated[int, Field(ge=1870, le=2100)] | None = Field(
        None, description="unset: the catalog's median year"
    )
    countries: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")]], Field(max_length=300)] | None = Field(
        None, description="ISO 3166 alpha-2 codes where it is available; unset: everywhere"
    )

    @field_validator("title")
    @classmethod
    def title_has_words(cls, title: str) -> str:
        if not normalize(title):
            raise ValueError("the title needs at least one letter or digit")
        return title


class NewEntityBatch(RootModel[Annotated[list[NewEntity], Field(min_length=1, max_length=MAX_NEW_ENTITIES)]]):
    pass


class ModelLoad(BaseModel):
    """POST /admin/models: load the bundle at `path` (a directory, or an s3:// / gs:// URL) as `name`."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    path: Annotated[str, Field(min_length=1, max_length=1024)]
