"""The service's error kinds: each carries its HTTP status, headers and problems, field by field.

Contract: routes and the code below them raise a `ServiceError` subclass; one handler
(`service.api.errors.install_error_handlers`) renders every error, these and the unexpected ones, as

    {"detail": [{"field": str | null, "message": str, "type": str}], ...extra}

with the kind's status code and headers, and counts it in `unirank_errors_total{type}`. Redis
failures that the service rides out instead (the cache, the history read) go through
`store_failures_tolerated`, which counts them the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from service.ops.metrics import ERRORS

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
