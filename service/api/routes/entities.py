"""POST /entities (admin token): entities added at run time, for every model this worker holds; GET
/entities/{id}: one entity (as the routing's default model knows it)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import Admin, BundleDep, State
from service.api.payloads import json_body, json_response, parse
from service.errors import STORE_ERRORS, InvalidInput, NotFound, StoreUnavailable, TrainedEntity, problem
from service.schemas import NewEntityBatch

router = APIRouter()


@router.post("/entities", status_code=201, openapi_extra=json_body(NewEntityBatch), dependencies=[Admin])
async def add_entities(request: Request, state: State, bundle: BundleDep) -> Response:
    """Add (or replace) catalog entities at run time; they rank on the next request. Needs the admin token."""
    batch = parse(await request.body(), NewEntityBatch, root="entities").root
    seen: set[str] = set()
    duplicates = [i for i, e in enumerate(batch) if e.entity_id in seen or seen.add(e.entity_id)]
    if duplicates:
        message = "entity_id appears twice in the batch"
        raise InvalidInput([problem(message, f"entities[{i}].entity_id", "duplicate") for i in duplicates])
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


@router.get("/entities/{entity_id}")
async def entity(entity_id: str, bundle: BundleDep) -> Response:
    """Title, kind, genres, year and availability of one entity (trained or added at run time)."""
    tables = bundle.tables
    idx = tables.entity_index.get(entity_id)
    if idx is None:
        raise NotFound(f"unknown entity '{entity_id}'")
    if idx > tables.n_model_entities:
        return json_response(bundle.catalog.records[entity_id] | {"added_at_run_time": True})
    row = tables.entity_table.slice(idx - 1, 1).to_pylist()[0]
    return json_response(row | {"added_at_run_time": False})
