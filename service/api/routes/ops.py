"""Operations: /healthz (liveness), /readyz (bundle loaded, Redis reachable), /model, /metrics, and the
benchmark's no-op endpoint when enabled."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from service.api.deps import BundleDep, State
from service.api.direct_route import DirectRoute
from service.api.payloads import JSON, json_response
from service.api.responses import Open, errors, ok
from service.core.errors import STORE_ERRORS
from service.ops.metrics import render
from service.store.breaker import BreakerOpen

router = APIRouter()
bench_router = APIRouter(include_in_schema=False, route_class=DirectRoute)


@router.get("/healthz", responses=ok(Open))
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", responses=ok(Open) | {503: {"model": Open, "description": "Not ready (reason)"}})
async def readyz(state: State) -> Response:
    try:
        await state.redis.ping()
        redis_status = "ok"
    except BreakerOpen:
        redis_status = "circuit open: serving without Redis, probing it"
    except STORE_ERRORS as exc:
        redis_status = f"error: {type(exc).__name__}"
    body = {"ready": state.ready, "redis": redis_status, "redis_breaker": state.breaker.state}
    if not state.ready:
        return json_response(body | {"reason": state.load_error}, 503)
    if state.drain.active:  # load balancers take this worker out while it finishes what it has
        return json_response(body | {"ready": False, "reason": "draining: shutting down"}, 503)
    fleet = state.fleet
    models = {name: m.version for name, m in fleet.models.items()}
    return json_response(
        body | {"model_version": state.bundle.version, "models": models, "routing": fleet.routing.model_dump()}
    )


@router.get("/model", responses=ok(Open) | errors(503))
async def model(bundle: BundleDep) -> Response:
    return json_response(bundle.describe())


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics() -> Response:
    payload, content_type = render()
    return Response(payload, media_type=content_type)


@bench_router.post("/bench/noop")
async def noop(request: Request) -> Response:
    """The HTTP stack's own limit: read the body, answer a fixed small JSON."""
    await request.body()
    return Response(b'{"items":[]}', media_type=JSON)
