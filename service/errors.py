"""The service's error kinds and their one mapping to HTTP.

Contract: routes and the code below them raise a `ServiceError` subclass; one handler
(`install_error_handlers`) renders every error, these and the unexpected ones, as

    {"detail": [{"field": str | null, "message": str, "type": str}], ...extra}

with the kind's status code and headers, and counts it in `unirank_errors_total{type}`. Redis
failures that the service rides out instead (the cache, the history read) go through
`store_failures_tolerated`, which counts them the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.metrics import ERRORS

log = logging.getLogger("unirank.errors")

PARAM_PLACES = ("body", "query", "path", "header", "cookie")
STORE_ERRORS = (RedisError, OSError)  # what a Redis call raises when Redis is down, slow or refusing


def count_error(kind: str, exc: BaseException | None = None) -> None:
    """unirank_errors_total{type="<kind>"}, or "<kind>_<ExceptionName>" when the cause is known."""
    ERRORS.labels(type=f"{kind}_{type(exc).__name__}" if exc is not None else kind).inc()


@contextmanager
def store_failures_tolerated(kind: str = "redis") -> Iterator[None]:
    """Redis failures inside are counted and swallowed: the caller carries on without Redis."""
    try:
        yield
    except STORE_ERRORS as exc:
        count_error(kind, exc)


def problem(message: str, field: str | None = None, type_: str = "value_error") -> dict:
    return {"field": field, "message": message, "type": type_}


class DeadlineExceeded(Exception):
    """Internal: the request's time budget ran out before the model scored (the caller answers with the
    fallback ranking; never an HTTP error)."""


class ModelFailure(Exception):
    """Internal: the model call failed (the caller answers with the fallback ranking)."""


class ServiceError(Exception):
    """Base of every error the API answers on purpose."""

    status = 500
    kind = "internal"  # the errors_total type (and each detail's type unless given)
    headers: dict[str, str] = {}

    def __init__(
        self,
        message: str,
        *,
        problems: list[dict] | None = None,
        extra: dict | None = None,
        cause: BaseException | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.problems = problems or [problem(message, type_=self.kind)]
        self.extra = extra or {}
        self.cause = cause

    def metric_type(self) -> str:
        return f"{self.kind}_{type(self.cause).__name__}" if self.cause is not None else self.kind


class InvalidInput(ServiceError):
    """The body (or a parameter) breaks the API's rules; every problem names its field."""

    status, kind = 422, "validation"

    def __init__(self, problems: list[dict]):
        super().__init__("invalid input", problems=problems)


class Unsupported(InvalidInput):
    """Valid input that this model cannot serve (e.g. more personalization than it was trained with)."""

    def __init__(self, field: str, message: str):
        super().__init__([problem(message, field, "unsupported")])


class NotReady(ServiceError):
    status, kind, headers = 503, "not_ready", {"Retry-After": "1"}


class StoreUnavailable(ServiceError):
    """Redis could not take a write the client must not believe happened: retry later."""

    status, headers = 503, {"Retry-After": "1"}

    def __init__(self, message: str, kind: str, cause: BaseException):
        self.kind = kind
        super().__init__(message, cause=cause)


class Unauthorized(ServiceError):
    status, kind, headers = 401, "unauthorized", {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status, kind = 403, "forbidden"


class NotFound(ServiceError):
    status, kind = 404, "not_found"


class NotReadyEverywhere(ServiceError):
    """A change is in place on this worker but not yet on every worker of the replica."""

    status, kind, headers = 503, "not_ready_everywhere", {"Retry-After": "1"}


class RoutedModel(ServiceError):
    """A model the routing uses cannot be unloaded."""

    status, kind = 409, "routed_model"


class TrainedEntity(ServiceError):
    """An entity of the model's training catalog cannot be changed at run time."""

    status, kind = 409, "trained_entity"


def field_name(loc: tuple, root: str | None = None) -> str:
    """pydantic's error location as one dotted name; list items of a root list as `root[i].field`."""
    parts = [str(p) for p in loc if p != "body"]
    if root is None:
        return ".".join(parts) or "body"
    if not parts:
        return root
    head, rest = parts[0], parts[1:]
    return f"{root}[{head}]" + "".join(f".{p}" for p in rest)


def pydantic_problems(errors: list[dict], root: str | None = None) -> list[dict]:
    return [
        problem(e.get("msg", str(e)), field_name(tuple(e.get("loc", ())), root), e.get("type", "value_error"))
        for e in errors
    ]


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
