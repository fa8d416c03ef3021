"""The HTTP layer: `create_app(settings)` builds the FastAPI app (routes in `service.api.routes`)."""

from service.api.app import create_app

__all__ = ["create_app"]
