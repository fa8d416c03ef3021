"""The response bodies of the HTTP API, for the OpenAPI document (client generators, /docs, schemathesis).

Contract: the routes encode their bodies themselves (orjson; a ranking is `service.core.answer.RankAnswer`
encoded), so these models only document them; `tests/test_api_contract.py` holds the service to them by
running schemathesis against a live server, and `tests/test_rank_answer.py` validates served rankings of
every kind (task, level, cache hit and miss, degraded, A/B, interleaved) against `RankResponse`.
`errors(...)` documents the one error body every error has (`service.api.errors`), per status code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from unirank.core.vocab import TaskName


class Problem(BaseModel):
    field: str | None = Field(description="The request field, parameter or header at fault; null: the request")
    message: str
    type: str


class ErrorBody(BaseModel):
    """Every error: what went wrong, field by field (plus a few error-specific members)."""

    model_config = ConfigDict(extra="allow")
    detail: list[Problem]


class Warning_(Problem):
    model_config = ConfigDict(title="Warning")
    entity_ids: list[str] | None = Field(None, description="For unknown candidates: the first 20 of them")


class RankItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity_id: str
    score: float = Field(description="P(engagement) (the fallback order's 1 down to 1/n when degraded)")
    variant: str | None = Field(None, description="Interleaving: the model whose team contributed the item")
    title: str | None = Field(None, description="With display: true")
    kind: str | None = Field(None, description="With display: true")
    genres: list[str] | None = Field(None, description="With display: true")
    release_year: int | None = Field(None, description="With display: true (GET /entities uses the same name)")
    year: int | None = Field(None, description="Deprecated (removed in 0.3): release_year", deprecated=True)


class RankResponse(BaseModel):
    """Every ranking answer (`POST /rank`, the keystroke GETs): `service.core.answer.RankAnswer` encoded."""

    model_config = ConfigDict(extra="forbid")
    items: list[RankItem] = Field(description="Best first, at most k")
    model: str | None = Field(description="The model that answered (null: interleaved)")
    model_version: str
    task: TaskName
    cache: Literal["hit", "miss", "bypass"]
    returned: int | None = Field(description="How many items (fewer than k when fewer candidates exist)")
    available: int | None = Field(description="How many candidates the items were chosen from")
    warnings: list[Warning_] = Field(description="What the model did not know (an unknown user, source, country)")
    degraded: bool = Field(description="true: answered without the model (deadline or model error)")
    degraded_reason: Literal["deadline", "model_error"] | None = Field(description="Why, when degraded")
    request_id: str
    experiment: str | None
    variant: str | None
    context: dict | None = Field(None, description="With explain: true, the unified context as built")


class EventsAccepted(BaseModel):
    model_config = ConfigDict(extra="allow")
    accepted: int


class EntitiesAdded(BaseModel):
    accepted: int
    visible: bool = Field(description="Applied on this worker (others follow within a read's round trip)")
    text_features: bool
    catalog_generation: str
    ignored: dict[str, dict[str, list[str]]] = Field(description="Per entity: genres and countries not known")


class Entity(BaseModel):
    model_config = ConfigDict(extra="allow")
    entity_id: str
    title: str
    kind: str
    genres: list[str]
    release_year: int | None
    countries: list[str] | None
    tags: list[str] = Field([], description="Catalogue tags (search finds the entity by them)")
    added_at_run_time: bool


class EntityBatch(BaseModel):
    entities: list[Entity] = Field(description="The known ones, in the order asked")
    unknown: list[str] = Field(description="Ids no model here knows")


class Open(BaseModel):
    """A JSON object whose members are described in the docs (docs/api.md)."""

    model_config = ConfigDict(extra="allow")


DESCRIPTIONS = {
    401: "Missing or wrong bearer token",
    403: "The endpoint is off (its token is not configured)",
    404: "Not found",
    409: "Conflicts with what the service holds",
    413: "The body is larger than UNIRANK_MAX_BODY_BYTES",
    422: "Invalid input: every problem names its field",
    503: "Not ready, overloaded or its store is unavailable: retry after Retry-After",
}


def errors(*codes: int) -> dict:
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def ok(model: type[BaseModel], code: int = 200, description: str = "OK") -> dict:
    return {code: {"model": model, "description": description}}


BEARER = {"security": [{"bearer": []}]}
BEARER_IF_SET = {"security": [{}, {"bearer": []}]}  # when its token is configured
