"""HTTP API: POST /rank, POST /events, POST /entities, GET /entities/{id}, /healthz, /readyz, /model, /metrics.

Bodies are parsed with pydantic-core's JSON parser and answered with orjson-encoded bytes. Any
invalid input is a 422 whose body names the field; nothing accepted is lost (/events answers 202 only
after Redis acknowledged the write, 503 otherwise; so does POST /entities, which also needs the
admin token).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError
from redis.exceptions import RedisError

from service.bundle import RANK_OUTPUTS, BundleMissing, LoadedBundle
from service.cache import EmbeddedRedis, RankCache, connect
from service.catalog import CatalogSync
from service.context import PersonalizationError
from service.events import EventStore
from service.metrics import ERRORS, EVENTS, MODEL_INFO, REQUEST_LATENCY, render
from service.ranker import Ranker, Timings
from service.schemas import EventBatch, NewEntityBatch, RankRequest
from service.settings import Settings, get_settings

log = logging.getLogger("unirank.api")
JSON = "application/json"


def _json(payload, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def validation_error(errors: list[dict], root: str | None = None) -> Response:
    """422 with one entry per problem, each naming its field."""
    detail = []
    for e in errors:
        field = _field(tuple(e.get("loc", ())))
        if root and field == "body":
            field = root
        elif root:
            field = f"{root}[{field.split('.', 1)[0]}]" + ("." + field.split(".", 1)[1] if "." in field else "")
        detail.append({"field": field, "message": e.get("msg", str(e)), "type": e.get("type", "value_error")})
    ERRORS.labels(type="validation").inc()
    return _json({"detail": detail}, 422)


def _configure_logging() -> None:
    logger = logging.getLogger("unirank")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class State:
    """What the app holds between requests; `ranker` is None until the bundle is loaded."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.embedded: EmbeddedRedis | None = None
        self.redis = None
        self.events_redis = None
        self.cache: RankCache | None = None
        self.events: EventStore | None = None
        self.bundle: LoadedBundle | None = None
        self.ranker: Ranker | None = None
        self.catalog_redis = None
        self.catalog_sync: CatalogSync | None = None
        self.catalog_task: asyncio.Task | None = None
        self.load_error: str | None = "loading"
        self.loader: asyncio.Task | None = None

    async def load_bundle_when_present(self) -> None:
        """Keep looking for the bundle (it may still be copied in by an init container) until it loads."""
        path = Path(self.settings.bundle)
        while self.bundle is None:
            try:
                bundle = await asyncio.to_thread(LoadedBundle.load, path, self.settings)
            except BundleMissing as exc:
                self.load_error = str(exc)
                await asyncio.sleep(self.settings.bundle_poll_s)
                continue
            except Exception as exc:
                log.exception("bundle at %s failed to load", path)
                self.load_error = f"bundle failed to load: {exc}"
                await asyncio.sleep(max(self.settings.bundle_poll_s, 5.0))
                continue
            await self.follow_catalog(bundle)
            self.bundle = bundle
            self.ranker = Ranker(bundle, self.cache, self.redis, self.settings)
            self.load_error = None
            MODEL_INFO.labels(version=bundle.version, personalization=bundle.level, provider=bundle.scorer.provider).set(1)


    async def follow_catalog(self, bundle: LoadedBundle) -> None:
        """Entities added at run time: replay the log before serving, then follow it."""
        self.catalog_sync = CatalogSync(self.catalog_redis, bundle.catalog, self.settings.catalog_stream, self.settings.catalog_block_s)
        try:
            added = await self.catalog_sync.catch_up()
            log.info("runtime catalog: %d entities added at run time (generation %s)", added, bundle.catalog.generation or "-")
        except (RedisError, OSError) as exc:  # serve the bundle's catalog; the follower keeps trying
            ERRORS.labels(type=f"catalog_{type(exc).__name__}").inc()
            log.warning("runtime catalog not replayed yet: %s", exc)
        self.catalog_task = asyncio.create_task(self.catalog_sync.run())


def _authorize(request: Request, token: str | None) -> Response | None:
    """None when the request carries the admin token; else the answer to give."""
    if not token:
        return _json({"detail": "this endpoint is disabled: set UNIRANK_ADMIN_TOKEN to enable it"}, 403)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        return _json({"detail": "missing or wrong admin token (Authorization: Bearer <token>)"}, 401, {"WWW-Authenticate": "Bearer"})
    return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _configure_logging()
        url = settings.redis_url
        if not url:
            state.embedded = await asyncio.to_thread(EmbeddedRedis)
            url = state.embedded.url
        state.redis = connect(url, settings.redis_timeout_s, settings.redis_max_connections)
        # writes of accepted events get their own pool and a longer timeout than the keystroke path's reads
        state.events_redis = connect(url, settings.events_timeout_s, settings.redis_max_connections)
        state.events = EventStore(state.events_redis, settings.history_ttl_s)
        state.catalog_redis = connect(url, settings.catalog_block_s + 2.0, 4)  # blocking reads of the catalog log
        state.cache = RankCache(state.redis, settings.cache_ttl_s, settings.local_cache_size, settings.local_cache_ttl_s)
        state.loader = asyncio.create_task(state.load_bundle_when_present())
        yield
        state.loader.cancel()
        if state.catalog_task:
            state.catalog_task.cancel()
        if state.bundle and state.bundle.batcher:
            state.bundle.batcher.close()
        await state.redis.aclose()
        await state.events_redis.aclose()
        await state.catalog_redis.aclose()
        if state.embedded:
            state.embedded.close()

    app = FastAPI(title="unirank", version="0.1.0", lifespan=lifespan, docs_url="/docs")
    app.state.unirank = state

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        """A bug must still answer JSON and be counted (the error-ratio alert reads the counter)."""
        ERRORS.labels(type="internal").inc()
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _json({"detail": "internal error"}, 500)

    def not_ready() -> Response:
        return _json({"detail": f"model not loaded: {state.load_error}"}, 503, {"Retry-After": "1"})

    @app.post("/rank", openapi_extra={"requestBody": {"content": {JSON: {"schema": RankRequest.model_json_schema()}}, "required": True}})
    async def rank(request: Request) -> Response:
        """Rank candidates (given, or retrieved) for the unified context; see the README for the fields."""
        started = time.perf_counter()
        try:
            req = RankRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return validation_error(exc.errors(include_url=False))
        if errors := req.task_input_errors():
            return validation_error(errors)
        if state.ranker is None:
            return not_ready()
        try:
            rc = state.ranker.context(req)
        except PersonalizationError as exc:
            return validation_error([{"loc": ("personalization",), "msg": str(exc), "type": "unsupported"}])
        timings = Timings(started)
        timings.add("context", started)
        batcher = state.bundle.batcher
        if batcher is None:
            result = await state.ranker.rank(req, rc, timings)
        else:
            batcher.enter()
            try:
                result = await state.ranker.rank(req, rc, timings)
            finally:
                batcher.leave()
        REQUEST_LATENCY.labels(endpoint="/rank", task=req.task).observe(time.perf_counter() - started)
        return Response(result.body, media_type=JSON, headers={"Server-Timing": timings.server_timing()})

    @app.post("/events", status_code=202, openapi_extra={"requestBody": {"content": {JSON: {"schema": EventBatch.model_json_schema()}}, "required": True}})
    async def events(request: Request) -> Response:
        """Store engagement events; 202 once Redis acknowledged them, 503 (retry) when it could not."""
        started = time.perf_counter()
        try:
            batch = EventBatch.model_validate_json(await request.body()).root
        except ValidationError as exc:
            return validation_error(exc.errors(include_url=False), root="events")
        try:
            stored = await state.events.store(batch)
        except (RedisError, OSError) as exc:
            ERRORS.labels(type=f"events_{type(exc).__name__}").inc()
            return _json({"detail": "events could not be stored; retry"}, 503, {"Retry-After": "1"})
        for action, n in Counter(ev.action for ev in batch).items():
            EVENTS.labels(action=action).inc(n)
        REQUEST_LATENCY.labels(endpoint="/events", task="").observe(time.perf_counter() - started)
        return _json({"accepted": stored}, 202)

    if settings.bench_endpoints:

        @app.post("/bench/noop", include_in_schema=False)
        async def noop(request: Request) -> Response:
            """The HTTP stack's own limit: read the body, answer a fixed small JSON."""
            await request.body()
            return Response(b'{"items":[]}', media_type=JSON)

    @app.post("/entities", status_code=201, openapi_extra={"requestBody": {"content": {JSON: {"schema": NewEntityBatch.model_json_schema()}}, "required": True}})
    async def add_entities(request: Request) -> Response:
        """Add (or replace) catalog entities at run time; they rank on the next request. Needs the admin token."""
        if (denied := _authorize(request, settings.admin_token)) is not None:
            return denied
        try:
            batch = NewEntityBatch.model_validate_json(await request.body()).root
        except ValidationError as exc:
            return validation_error(exc.errors(include_url=False), root="entities")
        seen: set[str] = set()
        duplicates = [i for i, e in enumerate(batch) if e.entity_id in seen or seen.add(e.entity_id)]
        if duplicates:
            return validation_error([{"loc": (i, "entity_id"), "msg": "entity_id appears twice in the batch", "type": "duplicate"} for i in duplicates], root="entities")
        if state.bundle is None:
            return not_ready()
        catalog = state.bundle.catalog
        if trained := catalog.trained([e.entity_id for e in batch]):
            return _json({"detail": "these entities are in the model's training catalog; retrain to change them", "entity_ids": trained}, 409)
        try:
            entry_id = await state.catalog_sync.publish(batch)
        except (RedisError, OSError) as exc:
            ERRORS.labels(type=f"catalog_{type(exc).__name__}").inc()
            return _json({"detail": "entities could not be stored; retry"}, 503, {"Retry-After": "1"})
        visible = await state.catalog_sync.wait_applied(entry_id, settings.catalog_block_s + 1.0)
        ignored = {e.entity_id: ig for e in batch if (ig := catalog.ignored(e))}
        return _json({"accepted": len(batch), "visible": visible, "text_features": catalog.text_encoder is not None,
                      "catalog_generation": entry_id, "ignored": ignored}, 201)  # fmt: skip

    @app.get("/entities/{entity_id}")
    async def entity(entity_id: str) -> Response:
        if state.bundle is None:
            return not_ready()
        t = state.bundle.tables
        idx = t.entity_index.get(entity_id)
        if idx is None:
            return _json({"detail": f"unknown entity '{entity_id}'"}, 404)
        if idx > t.n_model_entities:
            return _json(state.bundle.catalog.records[entity_id] | {"added_at_run_time": True})
        row = t.entity_table.slice(idx - 1, 1).to_pylist()[0]
        return _json(row | {"added_at_run_time": False})

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        try:
            await state.redis.ping()
            redis_status = "ok"
        except (RedisError, OSError) as exc:
            redis_status = f"error: {type(exc).__name__}"
        body = {"ready": state.bundle is not None, "redis": redis_status}
        if state.bundle is None:
            body["reason"] = state.load_error
            return _json(body, 503)
        body["model_version"] = state.bundle.version
        return _json(body)

    @app.get("/model")
    async def model() -> Response:
        if state.bundle is None:
            return not_ready()
        m, scorer = state.bundle.manifest, state.bundle.scorer
        keys = ("version", "content_hash", "created", "personalization", "tasks", "features", "imputation", "metrics", "training_data")
        batcher = state.bundle.batcher
        batching = {"on": batcher is not None} | ({"window_ms": batcher.window_s * 1000, "max_candidates": batcher.max_candidates,
                                                   "batches": batcher.batches, "requests": batcher.requests} if batcher else {})
        return _json({k: m.get(k) for k in keys} | {"execution_provider": scorer.provider, "device": scorer.device,
                                                      "io_binding": scorer.io_binding, "micro_batching": batching,
                                                      "runtime_catalog": {"entities": state.bundle.catalog.size,
                                                                          "generation": state.bundle.catalog.generation,
                                                                          "text_encoder": state.bundle.catalog.text_encoder is not None},
                                                      "rank_by": next(k for k, v in RANK_OUTPUTS.items() if v == scorer.output),
                                                      "bundle": str(state.bundle.path)})  # fmt: skip

    @app.get("/metrics")
    async def metrics() -> Response:
        payload, content_type = render()
        return Response(payload, media_type=content_type)

    return app
