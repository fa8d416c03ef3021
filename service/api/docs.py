"""/docs and /redoc that work offline, and the OpenAPI document they show.

Contract: Swagger UI and ReDoc come from the `fastapi-offline` package's files, served under
/docs-static (nothing is fetched from a CDN); the document declares the bearer scheme the admin and
ingest endpoints take (so "Authorize" in Swagger UI sends it), documents unirank's error body instead of
FastAPI's default 422 body, and keeps no unresolvable `$defs` reference.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-static"
UNUSED_DEFAULTS = ("HTTPValidationError", "ValidationError")  # FastAPI's 422 body; unirank's replaces it


def openapi_document(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for name in UNUSED_DEFAULTS:
            schemas.pop(name, None)
        for operation in (op for path in doc["paths"].values() for op in path.values()):
            invalid = operation.get("responses", {}).get("422")
            if invalid is not None and "HTTPValidationError" in str(invalid):  # FastAPI's, for path parameters
                operation["responses"]["422"] = {
                    "description": "Invalid input: every problem names its field",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                }
        doc["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "UNIRANK_ADMIN_TOKEN for /entities (POST) and /admin/*; UNIRANK_INGEST_TOKEN for "
                "/events when it is set",
            }
        }
        app.openapi_schema = doc
    return app.openapi_schema


def install_docs(app: FastAPI) -> None:
    """Call with `docs_url=None, redoc_url=None` given to FastAPI."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-static")
    app.openapi = lambda: openapi_document(app)

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
