"""Request bodies in, JSON out: the raw-body parsing every POST route shares.

Contract: `parse(raw, Model)` validates with pydantic-core's JSON parser (no intermediate dict) and
raises `InvalidInput` naming each bad field (`parse_rank`: the same for a /rank body, with its candidates
checked as one list when the body holds no control character); `json_response` encodes with orjson. `json_body(Model)`
declares the body in the OpenAPI document, since the routes read the raw body themselves.
"""

from __future__ import annotations

from typing import TypeVar

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from service.core.errors import InvalidInput, pydantic_problems
from service.core.schemas import RankRequest, UnescapedRankRequest, holds_no_control_character

JSON = "application/json"
M = TypeVar("M", bound=BaseModel)


def parse(raw: bytes, model: type[M], root: str | None = None) -> M:
    """`root` names a list body in field names (`events[3].action`)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidInput(pydantic_problems(exc.errors(include_url=False), root)) from None


def parse_rank(raw: bytes) -> RankRequest:
    """A /rank body: with no control character anywhere in it, its candidates are checked as one list
    (`UnescapedRankRequest`); any error is reported as `RankRequest` words it."""
    if holds_no_control_character(raw):
        try:
            return UnescapedRankRequest.model_validate_json(raw)
        except ValidationError:
            pass
    return parse(raw, RankRequest)


def json_response(payload, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def json_body(model: type[BaseModel]) -> dict:
    """openapi_extra for a route that parses its body itself (the model's schema with its `$defs`
    inlined: a `#/$defs/...` reference would not resolve inside the OpenAPI document)."""
    return {"requestBody": {"content": {JSON: {"schema": inline_defs(model.model_json_schema())}}, "required": True}}


def inline_defs(schema: dict) -> dict:
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(
                    dict(defs[ref.removeprefix("#/$defs/")]) | {k: v for k, v in node.items() if k != "$ref"}
                )
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
