"""GET /demo: one page (plain HTML, CSS and JS in the package; nothing from a CDN) that shows the service as
a frontend uses it, and GET /demo/meta, what the page needs to know about the bundle (its countries and
some of its users, with what each of them watched most). On with UNIRANK_DEMO_PAGE (`make serve`)."""

from __future__ import annotations

from collections import Counter
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from service.api.deps import BundleDep
from service.api.payloads import json_response

router = APIRouter(include_in_schema=False)
PAGE = files("service") / "static" / "demo.html"
DEMO_USERS = 12


@router.get("/demo")
async def demo_page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


@router.get("/demo/meta")
async def demo_meta(bundle: BundleDep) -> Response:
    tables = bundle.tables
    sizes = [len(tables.history_of(u)) for u in range(1, len(tables.user_ids))]
    most_active = sorted(range(1, len(tables.user_ids)), key=lambda u: (-sizes[u - 1], u))[:DEMO_USERS]
    users = []
    for u in most_active:
        genres = Counter(tables.genres[g] for e in tables.history_of(u)[:50].tolist() for g in tables.genre_ids[e] if g)
        users.append({"user_id": tables.user_ids[u], "likes": [g for g, _ in genres.most_common(2)]})
    return json_response(
        {
            "countries": [c for c in tables.countries[1:]],
            "users": users,
            "personalization": bundle.level,
            "model_version": bundle.version,
        }
    )
