"""Typed dependencies of the routes: the app state, the ranker and bundle (503 until loaded), the admin
token.

Contract: each raises a `service.core.errors` kind, never returns a response. `state_of` and `ready_state`
are plain functions that /rank and /events call directly: resolving a `Depends` costs ~15-20 us per request
in FastAPI 0.165, a quarter of a keystroke cache hit. The other routes take the `Depends` forms (which
are `async`: FastAPI runs plain functions in a thread pool).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.core.errors import Forbidden, NotReady, Unauthorized
from service.model.bundle import LoadedBundle
from service.state import AppState


def state_of(request: Request) -> AppState:
    """The state, read from the request's lifespan state (a dict look-up) when the server passes it, as
    uvicorn does; else from the app."""
    return request.scope.get("state", {}).get("unirank") or request.app.state.unirank


def ready_state(request: Request) -> AppState:
    """The state, once the routing's default model is loaded (else NotReady)."""
    state = state_of(request)
    if not state.ready:
        raise NotReady(f"model not loaded: {state.load_error}")
    return state


async def get_state(request: Request) -> AppState:
    return state_of(request)


State = Annotated[AppState, Depends(get_state)]


async def get_bundle(state: State) -> LoadedBundle:
    """The routing's default model's bundle."""
    if state.bundle is None:
        raise NotReady(f"model not loaded: {state.load_error}")
    return state.bundle


def check_bearer(request: Request, token: str, what: str) -> None:
    """Unauthorized unless the request carries `Authorization: Bearer <token>` (compared in constant time)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized(f"missing or wrong {what} (Authorization: Bearer <token>)")


async def require_admin(request: Request, state: State) -> None:
    """`Authorization: Bearer <UNIRANK_ADMIN_TOKEN>`; without a configured token the endpoint is off."""
    token = state.settings.admin_token
    if not token:
        raise Forbidden("this endpoint is disabled: set UNIRANK_ADMIN_TOKEN to enable it")
    check_bearer(request, token, "admin token")


BundleDep = Annotated[LoadedBundle, Depends(get_bundle)]
Admin = Depends(require_admin)
