"""POST /rank: the unified context's ranking by the model the routing picks (`service.ranking.serving`)."""

from __future__ import annotations

import functools
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import ready_state, state_of
from service.api.direct_route import DirectRoute
from service.api.payloads import JSON, json_body, parse_rank
from service.api.responses import RankResponse, errors, ok
from service.core.errors import InvalidInput, problem
from service.core.rollout import INTERLEAVED
from service.core.schemas import RankRequest
from service.ops.metrics import REQUEST_LATENCY, buffered
from service.ranking.ranker import Timings
from service.ranking.serving import repeated, serve_rank, serve_repeat

router = APIRouter(route_class=DirectRoute)


@functools.cache
def _latency(task: str, model: str):
    return buffered(REQUEST_LATENCY.labels(endpoint="/rank", task=task, model=model))  # labels() costs microseconds


TIMEOUT_HEADER = "x-request-timeout-ms"
_TIMEOUT_HEADER = TIMEOUT_HEADER.encode()


def request_budget_s(request: Request, budget_ms: float) -> float:
    """The service's budget, or less when the client asks for less (X-Request-Timeout-Ms)."""
    for name, value in request.scope["headers"]:  # the raw list (ASGI lower-cases names): no Headers object
        if name == _TIMEOUT_HEADER:
            asked = value.decode("latin-1")
            break
    else:
        return budget_ms / 1000
    try:
        ms = float(asked)
    except ValueError:
        ms = -1.0
    if not 0 < ms < float("inf"):
        raise InvalidInput(
            [problem(f"a positive number of milliseconds, not {asked!r}", "X-Request-Timeout-Ms", "header")]
        )
    return min(ms, budget_ms) / 1000


@router.post("/rank", openapi_extra=json_body(RankRequest), responses=ok(RankResponse) | errors(413, 422, 503))
async def rank(request: Request) -> Response:
    """Rank candidates (given, or retrieved) for the unified context; the fields: docs/api.md."""
    timings = Timings()
    raw = await request.body()
    state = state_of(request)
    if state.fleet is not None and (repeat := repeated(state.fleet, raw)) is not None:  # answered from memory
        request_budget_s(request, state.settings.request_budget_ms)  # a bad header is still refused
        content = serve_repeat(state.shadow, state.impressions, repeat, timings)
        _latency(repeat.answer.task, repeat.model.name).observe(time.perf_counter() - timings.started)
        return Response(content, media_type=JSON, headers={"Server-Timing": timings.header()})
    body = parse_rank(raw)
    if problems := body.task_input_problems():
        raise InvalidInput(problems)
    timings.add("parse", timings.started)
    state = ready_state(request)
    budget = request_budget_s(request, state.settings.request_budget_ms)
    answer = await serve_rank(state.fleet, state.shadow, state.impressions, body, timings, budget, raw)
    _latency(body.task, answer.model or INTERLEAVED).observe(time.perf_counter() - timings.started)
    return Response(answer.encode(), media_type=JSON, headers={"Server-Timing": timings.header()})
