"""Request and response bodies of the HTTP API (pydantic), with the validation rules of /rank, /events and /entities."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from model_export.text import normalize

Task = Literal["search", "prequery", "more_like_this"]
Personalization = Literal["none", "cluster", "full"]
MAX_CANDIDATES = 1000
MAX_EVENTS = 1000


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task: Task
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166 alpha-2")]
    user_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    query: Annotated[str, Field(max_length=200)] | None = None
    source_entity_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    candidates: Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=MAX_CANDIDATES)] | None = None
    k: Annotated[int, Field(ge=1, le=500)] = 20
    personalization: Personalization | None = None
    explain: bool = False

    def task_input_errors(self) -> list[dict]:
        """Inputs the task needs, as validation errors naming the field (checked after parsing)."""
        if self.task == "search" and not normalize(self.query):
            return [{"loc": ("query",), "msg": "search needs a query with at least one letter or digit", "type": "missing"}]
        if self.task == "more_like_this" and self.source_entity_id is None:
            return [{"loc": ("source_entity_id",), "msg": "more_like_this needs a source entity", "type": "missing"}]
        return []


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: Annotated[str, Field(min_length=1, max_length=128)]
    task: Task
    entity_id: Annotated[str, Field(min_length=1, max_length=128)]
    action: Literal["impression", "click", "play"]
    query: Annotated[str, Field(max_length=200)] | None = None
    source_entity_id: Annotated[str, Field(max_length=128)] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] | None = None
    ts: float | None = Field(None, description="Unix time in seconds; the server's clock when missing")


class EventBatch(RootModel[Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS)]]):
    pass


MAX_NEW_ENTITIES = 1000


class NewEntity(BaseModel):
    """An entity added at run time (POST /entities); the fields of the catalog's entities table."""

    model_config = ConfigDict(extra="ignore")

    entity_id: Annotated[str, Field(min_length=1, max_length=128)]
    title: Annotated[str, Field(min_length=1, max_length=300)]
    kind: Literal["video", "game"] = "video"
    genres: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=20)] = []
    release_year: Annotated[int, Field(ge=1870, le=2100)] | None = Field(None, description="unset: the catalog's median year")
    countries: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")]], Field(max_length=300)] | None = Field(
        None, description="ISO 3166 alpha-2 codes where it is available; unset: everywhere")

    @field_validator("title")
    @classmethod
    def title_has_words(cls, title: str) -> str:
        if not normalize(title):
            raise ValueError("the title needs at least one letter or digit")
        return title


class NewEntityBatch(RootModel[Annotated[list[NewEntity], Field(min_length=1, max_length=MAX_NEW_ENTITIES)]]):
    pass
