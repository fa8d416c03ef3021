"""GET /search, /prequery and /more_like_this: the rankings that are the same for everyone in a cluster and
country, in a form browsers and CDNs can cache (the limit of a keystroke cache hit is no server call).

Contract: each answers exactly as POST /rank with the same fields and personalization 'cluster' (the
user's cluster when `user_id` is given; the cold-start one without) or 'none' for bundles without
clusters; 'full' is never served here. Answers carry `Cache-Control` (`public`, or `private` when a user
id is in the URL; max-age UNIRANK_CACHE_MAX_AGE_S) and an `ETag` made of the service, the answering
model, its version and the runtime catalog generation; a matching `If-None-Match` is a 304 without
ranking anything. Answers in an experiment (the arm may differ per request) or degraded are `no-store`.
"""

from __future__ import annotations

import functools
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service.api.deps import ready_state
from service.api.payloads import JSON
from service.api.responses import RankResponse, errors, ok
from service.api.routes.rank import request_budget_s
from service.errors import InvalidInput, pydantic_problems
from service.metrics import REQUEST_LATENCY
from service.schemas import RankRequest
from service.serving import serve_rank
from service.state import AppState
from unirank.core.context import personalization_rank

router = APIRouter()

SERVICE_VERSION = "0.1.0"
PARAM_OF = {"query": "q"}  # a RankRequest field -> its query parameter, for error messages
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # as service.schemas.Id
Country = Annotated[str, Query(pattern=r"^[A-Za-z]{2}$", description="ISO 3166 alpha-2", examples=["US"])]
K = Annotated[int, Query(ge=1, le=500, description="Items wanted")]
UserId = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="Ranks for the user's cluster (the answer is shared by the cluster: cacheable)",
    ),
]
Display = Annotated[bool, Query(description="Add each item's title, kind, genres and year")]
RESPONSES = (
    ok(RankResponse, 200, "The ranking (the body of POST /rank)")
    | {304: {"description": "Not modified: the ETag given in If-None-Match is still current"}}
    | errors(422, 503)
)


@functools.cache
def _latency(endpoint: str, task: str, model: str):
    return REQUEST_LATENCY.labels(endpoint=endpoint, task=task, model=model)


def _level(state: AppState) -> str:
    bundle = state.bundle
    return "cluster" if personalization_rank(bundle.level) >= personalization_rank("cluster") else "none"


def _etag(state: AppState) -> str | None:
    """The validator of every cacheable answer of this replica right now; None when answers are not
    cacheable (an experiment routes requests to arms)."""
    routing = state.fleet.routing
    if routing.experiment is not None:
        return None
    model = state.fleet.serving(routing.default)
    return f'"{SERVICE_VERSION}:{model.name}:{model.bundle.cache_version}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


async def _answer(request: Request, endpoint: str, fields: dict) -> Response:
    started = time.perf_counter()
    state = ready_state(request)
    try:
        body = RankRequest.model_validate(
            {k: v for k, v in fields.items() if v is not None} | {"personalization": _level(state)}
        )
    except ValidationError as exc:
        problems = pydantic_problems(exc.errors(include_url=False))
        raise InvalidInput([p | {"field": PARAM_OF.get(p["field"], p["field"])} for p in problems]) from None
    if problems := body.task_input_problems():
        raise InvalidInput([p | {"field": PARAM_OF.get(p["field"], p["field"])} for p in problems])
    etag = _etag(state)
    cacheable = {"ETag": etag} if etag else {}
    scope = "private" if body.user_id else "public"
    cache_control = f"{scope}, max-age={state.settings.cache_max_age_s}"
    if etag and _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})
    budget = request_budget_s(request, state.settings.request_budget_ms)
    payload, model, timings = await serve_rank(state.fleet, state.shadow, state.impressions, body, started, budget)
    _latency(endpoint, body.task, model).observe(time.perf_counter() - started)
    # the ranker writes this member exactly so; inside an encoded id the quotes would be escaped
    degraded = b',"degraded":true' in payload
    headers = {"Server-Timing": timings.header()}
    if etag and not degraded:
        headers |= cacheable | {"Cache-Control": cache_control}
    else:
        headers["Cache-Control"] = "no-store"
    return Response(payload, media_type=JSON, headers=headers)


@router.get("/search", responses=RESPONSES)
async def search(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=200, description="What is in the search box")],
    country: Country,
    k: K = 20,
    user_id: UserId = None,
    display: Display = False,
) -> Response:
    """Keystroke search, cacheable: POST /rank's `search` at cluster level."""
    fields = {"task": "search", "query": q, "country": country, "k": k, "user_id": user_id, "display": display}
    return await _answer(request, "/search", fields)


@router.get("/prequery", responses=RESPONSES)
async def prequery(
    request: Request, country: Country, k: K = 20, user_id: UserId = None, display: Display = False
) -> Response:
    """The pre-query (home page) row, cacheable: POST /rank's `prequery` at cluster level."""
    fields = {"task": "prequery", "country": country, "k": k, "user_id": user_id, "display": display}
    return await _answer(request, "/prequery", fields)


@router.get("/more_like_this", responses=RESPONSES)
async def more_like_this(
    request: Request,
    source_entity_id: Annotated[
        str, Query(min_length=1, max_length=128, pattern=ID_PATTERN, description="The title whose page shows the row")
    ],
    country: Country,
    k: K = 20,
    user_id: UserId = None,
    display: Display = False,
) -> Response:
    """The more-like-this row of a title, cacheable: POST /rank's `more_like_this` at cluster level."""
    fields = {
        "task": "more_like_this",
        "source_entity_id": source_entity_id,
        "country": country,
        "k": k,
        "user_id": user_id,
        "display": display,
    }
    return await _answer(request, "/more_like_this", fields)
