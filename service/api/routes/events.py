"""POST /events: engagement into Redis (history, counters, and feedback by request); 202 only once Redis
acknowledged it; clicks and plays credited to an experiment's variant are counted live."""

from __future__ import annotations

import time
from collections import Counter

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import check_bearer, state_of
from service.api.direct_route import DirectRoute
from service.api.payloads import json_body, json_response, parse
from service.api.responses import BEARER_IF_SET, EventsAccepted, errors, ok
from service.core.errors import STORE_ERRORS, StoreUnavailable
from service.core.schemas import EventBatch
from service.ops.metrics import EVENTS, EXPERIMENT_EVENTS, FEEDBACK, REQUEST_LATENCY

router = APIRouter(route_class=DirectRoute)


@router.post(
    "/events",
    status_code=202,
    openapi_extra=json_body(EventBatch) | BEARER_IF_SET,
    responses=ok(EventsAccepted, 202, "Stored") | errors(401, 413, 422, 503),
)
async def events(request: Request) -> Response:
    """Store engagement events; 202 once Redis acknowledged them, 503 (retry) when it could not."""
    started = time.perf_counter()
    state = state_of(request)
    if state.settings.ingest_token:
        check_bearer(request, state.settings.ingest_token, "ingest token")
    batch = parse(await request.body(), EventBatch, root="events").root
    try:
        stored, credited = await state.events.store(batch)
    except STORE_ERRORS as exc:
        raise StoreUnavailable("events could not be stored; retry", "events", exc) from exc
    for action, n in Counter(ev.action for ev in batch).items():
        EVENTS.labels(action=action).inc(n)
    for ev, experiment, variant in credited:
        FEEDBACK.labels(result="in_experiment" if experiment else "joined_later").inc()
        if experiment is not None:
            EXPERIMENT_EVENTS.labels(experiment=experiment, variant=variant or "", action=ev.action).inc()
    REQUEST_LATENCY.labels(endpoint="/events", task="", model="").observe(time.perf_counter() - started)
    return json_response({"accepted": stored}, 202)
