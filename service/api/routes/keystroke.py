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

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service.api.deps import ready_state
from service.api.direct_route import DirectRoute
from service.api.payloads import JSON
from service.api.responses import RankResponse, errors, ok
from service.api.routes.rank import request_budget_s
from service.core.errors import InvalidInput, problem, pydantic_problems
from service.core.rollout import INTERLEAVED
from service.core.schemas import RankRequest
from service.ops.metrics import REQUEST_LATENCY, buffered
from service.ranking.ranker import Timings
from service.ranking.serving import repeated, serve_rank, serve_repeat
from service.state import AppState
from unirank.core.context import personalization_rank

router = APIRouter(route_class=DirectRoute)

SERVICE_VERSION = "0.1.0"
PARAM_OF = {"query": "q"}  # a RankRequest field -> its query parameter, for error messages
FIELD_OF = {"q": "query"}
ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[^\x00-\x1f\x7f]+$"}  # schemas.Id


def _param(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


COMMON = [
    _param("country", {"type": "string", "pattern": "^[A-Za-z]{2}$"}, "ISO 3166 alpha-2", required=True),
    _param("k", {"type": "integer", "minimum": 1, "maximum": 500, "default": 20}, "Items wanted"),
    _param("user_id", ID, "Ranks for the user's cluster (the answer is shared by the cluster: cacheable)"),
    _param("display", {"type": "boolean", "default": False}, "Add each item's title, kind, genres and release_year"),
]
PARAMETERS = {
    "search": [
        _param("q", {"type": "string", "minLength": 1, "maxLength": 200}, "What is in the search box", True),
        *COMMON,
    ],
    "prequery": COMMON,
    "more_like_this": [_param("source_entity_id", ID, "The title whose page shows the row", True), *COMMON],
}
RESPONSES = (
    ok(RankResponse, 200, "The ranking (the body of POST /rank)")
    | {304: {"description": "Not modified: the ETag given in If-None-Match is still current"}}
    | errors(422, 503)
)


@functools.cache
def _latency(endpoint: str, task: str, model: str):
    return buffered(REQUEST_LATENCY.labels(endpoint=endpoint, task=task, model=model))


def _level(state: AppState) -> str:
    bundle = state.bundle
    return "cluster" if personalization_rank(bundle.level) >= personalization_rank("cluster") else "none"


@functools.cache
def _tag(model: str, cache_version: str) -> str:
    return f'"{SERVICE_VERSION}:{model}:{cache_version}"'


def _etag(state: AppState) -> str | None:
    """The validator of every cacheable answer of this replica right now; None when answers are not
    cacheable (an experiment routes requests to arms)."""
    routing = state.fleet.routing
    if routing.experiment is not None:
        return None
    model = state.fleet.serving(routing.default)
    return _tag(model.name, model.bundle.cache_version)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _parse(request: Request, task: str, level: str) -> RankRequest:
    """The query parameters as a RankRequest (parsed here, not by FastAPI's parameter machinery, which
    costs more than the rest of a cached answer); unknown parameters (a cache buster) are ignored."""
    params = request.query_params
    fields = {FIELD_OF.get(p["name"], p["name"]): params[p["name"]] for p in PARAMETERS[task] if p["name"] in params}
    problems = {  # by field: a parameter missing, then what validation says of each
        p["name"]: problem("Field required", p["name"], "missing")
        for p in PARAMETERS[task]
        if p["required"] and p["name"] not in params
    }
    try:
        body = RankRequest.model_validate_strings(fields | {"task": task, "personalization": level}, strict=False)
    except ValidationError as exc:
        for p in pydantic_problems(exc.errors()):
            name = PARAM_OF.get(p["field"], p["field"])
            problems[name] = p | {"field": name}
    if problems:
        raise InvalidInput([problems[name] for name in sorted(problems)])
    return body


async def _answer(request: Request, task: str) -> Response:
    timings = Timings()
    state = ready_state(request)
    raw = b"/%s?%s" % (task.encode(), request.scope["query_string"])  # never a POST /rank body ("{...}")
    repeat = repeated(state.fleet, raw)
    if repeat is not None:  # these parameters were answered from the cache: the same request again
        body = repeat.request
    else:
        body = _parse(request, task, _level(state))
        if problems := body.task_input_problems():
            raise InvalidInput([p | {"field": PARAM_OF.get(p["field"], p["field"])} for p in problems])
        timings.add("parse", timings.started)
    etag = _etag(state)
    cache_control = f"{'private' if body.user_id else 'public'}, max-age={state.settings.cache_max_age_s}"
    if etag and _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})
    budget = request_budget_s(request, state.settings.request_budget_ms)
    if repeat is not None:
        content = serve_repeat(state.shadow, state.impressions, repeat, timings)
        model, degraded = repeat.model.name, False
    else:
        answer = await serve_rank(state.fleet, state.shadow, state.impressions, body, timings, budget, raw)
        content, model, degraded = answer.encode(), answer.model or INTERLEAVED, answer.degraded
    _latency(f"/{task}", body.task, model).observe(time.perf_counter() - timings.started)
    headers = {"Server-Timing": timings.header()}
    if etag and not degraded:
        headers |= {"ETag": etag, "Cache-Control": cache_control}
    else:
        headers["Cache-Control"] = "no-store"
    return Response(content, media_type=JSON, headers=headers)


def _route(task: str, summary: str):
    async def route(request: Request) -> Response:
        return await _answer(request, task)

    route.__doc__ = summary
    route.__name__ = f"get_{task}"
    return router.get(f"/{task}", responses=RESPONSES, openapi_extra={"parameters": PARAMETERS[task]})(route)


search = _route("search", "Keystroke search, cacheable: POST /rank's `search` at cluster level.")
prequery = _route("prequery", "The pre-query (home page) row, cacheable: POST /rank's `prequery` at cluster level.")
more_like_this = _route(
    "more_like_this", "The more-like-this row of a title, cacheable: POST /rank's `more_like_this` at cluster level."
)
