"""POST /entities (admin token): entities added at run time, for every model this worker holds; GET
/entities/{id}: one entity, GET /entities?ids=...: many (as the routing's default model knows them)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import StringConstraints

from service.api.deps import Admin, BundleDep, State
from service.api.payloads import json_body, json_response, parse
from service.api.responses import BEARER, EntitiesAdded, Entity, EntityBatch, errors, ok
from service.core.errors import STORE_ERRORS, InvalidInput, NotFound, StoreUnavailable, TrainedEntity, problem
from service.core.schemas import NewEntityBatch

router = APIRouter()


@router.post(
    "/entities",
    status_code=201,
    openapi_extra=json_body(NewEntityBatch) | BEARER,
    dependencies=[Admin],
    responses=ok(EntitiesAdded, 201, "Added") | errors(401, 403, 409, 413, 422, 503),
)
async def add_entities(request: Request, state: State, bundle: BundleDep) -> Response:
    """Add (or replace) catalog entities at run time; they rank on the next request (an id given twice in
    a batch: the last one counts). Needs the admin token."""
    batch = list({e.entity_id: e for e in parse(await request.body(), NewEntityBatch, root="entities").root}.values())
    catalog = bundle.catalog
    if trained := catalog.trained([e.entity_id for e in batch]):
        message = "these entities are in the model's training catalog; retrain to change them"
        raise TrainedEntity(message, extra={"entity_ids": trained})
    models = list(state.fleet.models.values())
    try:
        entry_id = await models[0].catalog_sync.publish(batch)
    except STORE_ERRORS as exc:
        raise StoreUnavailable("entities could not be stored; retry", "catalog", exc) from exc
    timeout = state.settings.catalog_block_s + 1.0
    applied = await asyncio.gather(*(m.catalog_sync.wait_applied(entry_id, timeout) for m in models))
    visible = all(applied)
    ignored = {e.entity_id: ig for e in batch if (ig := catalog.ignored(e))}
    reply = {
        "accepted": len(batch),
        "visible": visible,
        "text_features": catalog.text_encoder is not None,
        "catalog_generation": entry_id,
        "ignored": ignored,
    }
    return json_response(reply, 201)


@router.get("/entities/{entity_id:path}", responses=ok(Entity) | errors(404, 503))
async def entity(entity_id: str, bundle: BundleDep) -> Response:
    """Title, kind, genres, year and availability of one entity (trained or added at run time)."""
    record = bundle.entities.record(entity_id)
    if record is None:
        raise NotFound(f"unknown entity '{entity_id}'")
    return json_response(record)


MAX_LOOKUP = 500


@router.get("/entities", responses=ok(EntityBatch) | errors(422, 503))
async def entities_batch(
    bundle: BundleDep,
    ids: Annotated[
        list[Annotated[str, StringConstraints(min_length=1)]],
        Query(
            description="Entity ids, repeated (`ids=a&ids=b`) or comma-separated (`ids=a,b`); at most "
            f"{MAX_LOOKUP}. An id holding a comma: GET /entities/{{id}}",
        ),
    ],
) -> Response:
    """Display records of many entities in one call (for rendering a ranked list): the known ones in the
    order asked, and the ids nobody knows."""
    wanted = list(dict.fromkeys(i for part in ids for i in part.split(",") if i))
    if len(wanted) > MAX_LOOKUP:
        raise InvalidInput([problem(f"at most {MAX_LOOKUP} ids per call, not {len(wanted)}", "ids", "too_long")])
    records = {i: bundle.entities.record(i) for i in wanted}
    return json_response(
        {
            "entities": [r for r in records.values() if r is not None],
            "unknown": [i for i, r in records.items() if r is None],
        }
    )
