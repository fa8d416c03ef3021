"""The route class of the hot endpoints (/rank, the keystroke GETs, /events, the bench's no-op): FastAPI
documents them as declared, Starlette calls them.

Contract: a `DirectRoute` endpoint takes the `Request` alone and returns a `Response`; it is called as a
Starlette endpoint is (the app's exception handlers still map what it raises). FastAPI's own handler,
which solves the dependencies (building the query parameters, cookies and a sub-response even for a
`Request`-only endpoint) and opens two exit stacks for dependencies with `yield`, costs ~25 us a
request in FastAPI 0.165: about as much as the rest of a keystroke cache hit's handler. The OpenAPI
document is built from the route's declaration as for any `APIRoute`.
"""

from __future__ import annotations

import inspect

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.routing import request_response


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint, **kwargs):
        super().__init__(path, endpoint, **kwargs)
        params = list(inspect.signature(endpoint).parameters.values())
        if (
            len(params) != 1
            or params[0].annotation not in (Request, "Request")
            or kwargs.get("dependencies")
            or kwargs.get("max_body_size")
        ):
            raise TypeError(
                f"{path}: a DirectRoute endpoint takes the Request alone (no dependencies, no route body limit)"
            )
        self.app = request_response(endpoint)
