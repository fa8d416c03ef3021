"""The HTTP layer: `create_app(settings)` builds the FastAPI app (routes in `service.api.routes`).

Owns routes, request parsing, admission (load shedding), the one mapping of errors to HTTP
(`service.api.errors`) and the OpenAPI document. May import every other layer of the service; nothing
imports it.
"""

from service.api.app import create_app

__all__ = ["create_app"]
