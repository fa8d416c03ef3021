"""The hot routes' route class and the app's telemetry switch: a DirectRoute endpoint is called with the
Request alone, so one that needs dependencies (or a route body limit) is refused when the route is
declared, not silently run without them; the OpenAPI document still describes a DirectRoute as declared;
FastAPI's native OpenTelemetry is on exactly when a provider was set up before the app."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient

from service.api.direct_route import DirectRoute


async def _dependency() -> int:
    return 1


def test_a_direct_route_refuses_an_endpoint_it_could_not_call_as_declared():
    router = APIRouter(route_class=DirectRoute)

    async def with_dependency(request: Request, n: int = Depends(_dependency)) -> Response:
        return Response(b"")

    async def with_query(q: str) -> Response:
        return Response(q)

    for endpoint in (with_dependency, with_query):
        with pytest.raises(TypeError, match="takes the Request alone"):
            router.post("/x")(endpoint)
    with pytest.raises(TypeError, match="takes the Request alone"):
        APIRouter(route_class=DirectRoute, dependencies=[Depends(_dependency)]).post("/y")(_echo)


async def _echo(request: Request) -> Response:
    """Echo the body."""
    if request.headers.get("x-fail"):
        raise KeyError("boom")
    return Response(await request.body(), media_type="application/json", headers={"x-seen": "1"})


def test_a_direct_route_answers_maps_errors_and_is_documented_as_declared():
    app = FastAPI()
    router = APIRouter(route_class=DirectRoute)
    router.post("/echo", openapi_extra={"requestBody": {"content": {"application/json": {"schema": {}}}}})(_echo)
    app.router.routes.extend(router.routes)

    @app.exception_handler(KeyError)
    async def key_error(request, exc):
        return Response(b"mapped", status_code=418)

    client = TestClient(app)
    answer = client.post("/echo", content=b'{"a":1}')
    assert (answer.status_code, answer.content, answer.headers["x-seen"]) == (200, b'{"a":1}', "1")
    assert client.post("/echo", content=b"{}", headers={"x-fail": "1"}).status_code == 418
    operation = client.get("/openapi.json").json()["paths"]["/echo"]["post"]
    assert operation["description"] == "Echo the body." and "application/json" in operation["requestBody"]["content"]


def _configured(setup: str) -> bool:
    check = "from service.api.app import _opentelemetry_configured\nprint(_opentelemetry_configured())"
    code = textwrap.dedent(setup) + "\n" + check
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.strip() == "True"


def test_native_telemetry_is_on_only_with_a_provider_set_up_first():
    assert not _configured("")
    set_up = """
        from opentelemetry import trace

        class Provider(trace.TracerProvider):  # what an SDK's provider is to the API
            def get_tracer(self, *args, **kwargs):
                return trace.NoOpTracer()

        trace.set_tracer_provider(Provider())
    """
    assert _configured(set_up)
