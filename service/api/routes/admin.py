"""The roll-out API (admin token): the models this service holds, and the routing between them.

GET/POST /admin/models, DELETE /admin/models/{name}, GET/PUT /admin/routing (see `service.ranking.fleet`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import Admin, State
from service.api.payloads import json_body, json_response, parse
from service.api.responses import BEARER, Open, errors, ok
from service.core.errors import STORE_ERRORS, StoreUnavailable
from service.core.rollout import Routing
from service.core.schemas import ModelLoad

router = APIRouter(prefix="/admin", dependencies=[Admin], responses=errors(401, 403))


@router.get("/models", openapi_extra=BEARER, responses=ok(Open))
async def list_models(state: State) -> Response:
    """Every model this worker holds (name, version, path, personalization, tasks, loaded_at, requests it
    served), and which workers of the fleet hold what."""
    fleet = state.fleet
    try:
        workers = {
            r.worker: r.models for r in await fleet.control.reports(fresh_s=max(5.0, 4 * state.settings.control_poll_s))
        }
    except STORE_ERRORS:
        workers = None
    return json_response({"models": fleet.describe(), "routing": fleet.routing.model_dump(), "workers": workers})


@router.post(
    "/models",
    status_code=201,
    openapi_extra=json_body(ModelLoad) | BEARER,
    responses=ok(Open, 201, "Loaded on every worker") | errors(409, 413, 422, 503),
)
async def load(request: Request, state: State) -> Response:
    """Load, check and warm up a bundle under a name; 201 once every worker of this replica holds it."""
    body = parse(await request.body(), ModelLoad)
    try:
        described = await state.fleet.add_model(body.name, body.path)
    except STORE_ERRORS as exc:
        raise StoreUnavailable("the model list could not be stored; retry", "control", exc) from exc
    return json_response(described, 201)


@router.delete("/models/{name}", openapi_extra=BEARER, responses=ok(Open) | errors(404, 409, 503))
async def unload(name: str, state: State) -> Response:
    """Unload a model (409 while the routing uses it); in-flight requests finish on it."""
    try:
        await state.fleet.remove_model(name)
    except STORE_ERRORS as exc:
        raise StoreUnavailable("the model list could not be stored; retry", "control", exc) from exc
    return json_response({"unloaded": name})


@router.get("/routing", openapi_extra=BEARER, responses=ok(Open))
async def get_routing(state: State) -> Response:
    return json_response(state.fleet.routing.model_dump())


@router.put("/routing", openapi_extra=json_body(Routing) | BEARER, responses=ok(Open) | errors(413, 422, 503))
async def put_routing(request: Request, state: State) -> Response:
    """Set the default model, an A/B or interleaved experiment and a shadow; every worker within a second."""
    routing = parse(await request.body(), Routing)
    try:
        applied = await state.fleet.set_routing(routing)
    except STORE_ERRORS as exc:
        raise StoreUnavailable("the routing could not be stored; retry", "control", exc) from exc
    return json_response(applied.model_dump())
