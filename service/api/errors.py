"""The one mapping of errors to HTTP: every `ServiceError` kind, FastAPI's validation errors, Starlette's
own (404, 405) and unexpected exceptions, rendered in one body shape and counted.

Contract: `install_error_handlers(app)` makes every error answer

    {"detail": [{"field": str | null, "message": str, "type": str}], ...extra}

with the kind's status code and headers, counted in `unirank_errors_total{type}`.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.core.errors import ServiceError, count_error, problem, pydantic_problems
from service.ops.metrics import ERRORS

log = logging.getLogger("unirank.errors")

PARAM_PLACES = ("body", "query", "path", "header", "cookie")


def render(status: int, problems: list[dict], headers: dict | None = None, extra: dict | None = None) -> Response:
    body = {"detail": problems} | (extra or {})
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the request's path takes."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        ERRORS.labels(type=exc.metric_type()).inc()
        return render(exc.status, exc.problems, exc.headers, exc.extra)

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError) -> Response:
        count_error("validation")
        # a parameter is named as the client wrote it ("k"), not with FastAPI's location ("query.k")
        located = [
            e | {"loc": tuple(e["loc"])[1:]} if e.get("loc") and e["loc"][0] in PARAM_PLACES else e
            for e in exc.errors()
        ]
        return render(422, pydantic_problems(located))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Starlette's own (404 for an unknown path, 405 for a wrong method) in the same body shape."""
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names the first route of the path; a path may have several
            headers = dict(headers or {}) | {"Allow": ", ".join(allowed_methods(request))}
        return render(exc.status_code, [problem(str(exc.detail), type_="http")], headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        """A bug must still answer in the error shape and be counted (the error-ratio alert reads it)."""
        count_error("internal")
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return render(500, [problem("internal error", type_="internal")])
