"""The FastAPI app: settings -> state -> routers, one error handler set, the lifespan.

Contract: `create_app(settings)` is import-cheap and torch-free; the lifespan connects to Redis and
loads the bundle in the background (`service.state.AppState`). `uvicorn --factory
service.api:create_app` and `unirank serve` both use it.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api.admission import Admission, Budget
from service.api.docs import install_docs
from service.api.errors import install_error_handlers
from service.api.routes import admin, demo, entities, events, keystroke, ops, rank
from service.core.settings import Settings, get_settings
from service.state import AppState


def _configure_logging() -> None:
    logger = logging.getLogger("unirank")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _opentelemetry_configured() -> bool:
    """Whether an OpenTelemetry provider (an SDK's, `opentelemetry-instrument`'s) is set up, rather than the
    API's placeholders. Without one, FastAPI's native telemetry is off: it would otherwise ask on every
    request whether one has appeared since (environment look-ups included), ~5 us of a keystroke cache
    hit's ~85 us in the app. A provider set up before `create_app` keeps it on."""
    from opentelemetry import _logs, metrics, trace

    providers = (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider())
    return any(not type(p).__name__.lstrip("_").startswith(("Proxy", "NoOp")) for p in providers)


def create_app(settings: Settings | None = None) -> FastAPI:
    state = AppState(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _configure_logging()
        await state.start()
        yield {"unirank": state}  # the lifespan state: the server hands each request a copy (`ready_state`)
        await state.stop()

    app = FastAPI(
        title="unirank",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        telemetry=None if _opentelemetry_configured() else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.unirank = state
    install_error_handlers(app)
    routers = [rank.router, keystroke.router, events.router, entities.router, ops.router, admin.router]
    if state.settings.bench_endpoints:  # second, as /rank is first: the ceiling pays what /rank pays to be found
        routers.insert(1, ops.bench_router)
    if state.settings.demo_page:
        routers.append(demo.router)
    for router in routers:
        # the routes themselves, not `include_router`: an included router is one more dispatch layer per
        # request (~15 us in FastAPI 0.165), a fifth of a keystroke cache hit; prefixes and dependencies
        # are the routes' own
        app.router.routes.extend(router.routes)
    s = state.settings
    app.add_middleware(
        Admission,
        drain=state.drain,
        budgets=[
            Budget(("/rank",), s.max_in_flight, sheds_on_lag=True),
            Budget(("/events",), s.events_max_in_flight, sheds_on_lag=False),
        ],
        max_body=s.max_body_bytes,
        max_queue_delay_s=s.max_queue_delay_ms / 1000,
    )
    if s.cors_origins:  # outermost: a preflight is answered before admission control
        app.add_middleware(
            CORSMiddleware,
            allow_origins=s.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["content-type", "authorization", "x-request-timeout-ms", "if-none-match"],
            expose_headers=["server-timing", "etag", "retry-after"],
            max_age=600,
        )
    install_docs(app)
    return app
