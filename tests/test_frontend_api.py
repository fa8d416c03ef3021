"""What a frontend needs from the API, against the real service over HTTP and a real Redis: display fields,
counts and warnings on /rank, the batch entity lookup, CORS, the cacheable GET rankings (ETag, 304), the
in-session candidates of `full`, and /docs served without a CDN."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, rank
from unirank.core.tables import FeatureTables

APP_ORIGIN = "http://app.example"
TOKEN = "frontend-admin-token"


@pytest.fixture(scope="module")
def front(bundle_dir, redis_url):
    stream = f"ur:entities:test:{uuid.uuid4().hex[:8]}"
    env = {
        "UNIRANK_CORS_ORIGINS": APP_ORIGIN,
        "UNIRANK_DEMO_PAGE": "1",
        "UNIRANK_ADMIN_TOKEN": TOKEN,
        "UNIRANK_CATALOG_STREAM": stream,
        "UNIRANK_CACHE_MAX_AGE_S": "45",
    }
    live = LiveServer(bundle_dir, redis_url, env)
    live.wait_ready()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def tables(bundle_dir) -> FeatureTables:
    return FeatureTables.load(bundle_dir / "tables")


def a_query(tables: FeatureTables) -> str:
    return tables.norm_titles[1].split()[0][:3]


def test_display_fields_are_the_catalog_records(front, tables):
    q = a_query(tables)
    plain = rank(front.client, task="search", country="US", query=q, k=5, personalization="cluster")
    shown = rank(front.client, task="search", country="US", query=q, k=5, personalization="cluster", display=True)
    assert [i["entity_id"] for i in shown["items"]] == [i["entity_id"] for i in plain["items"]]
    assert [i["score"] for i in shown["items"]] == [i["score"] for i in plain["items"]]
    for item in shown["items"]:
        record = front.client.get(f"/entities/{item['entity_id']}").json()
        assert item["title"] == record["title"] and item["kind"] == record["kind"]
        assert item["genres"] == record["genres"] and item["release_year"] == record["release_year"]
        assert item["year"] == record["release_year"]  # the deprecated name, kept for one release
    assert "title" not in plain["items"][0]


def test_responses_say_when_fewer_than_k_exist(front):
    r = rank(front.client, task="prequery", country="US", k=500, personalization="full", user_id="u0000001")
    assert r["returned"] == len(r["items"]) < 500
    assert r["available"] >= r["returned"]
    body = dict(task="search", country="US", query="zzzzqqqq", k=20, personalization="cluster")
    none_found = rank(front.client, **body)
    assert none_found["items"] == [] and none_found["returned"] == 0 and none_found["available"] == 0
    cached = rank(front.client, **body)  # the counts survive the cache
    assert cached["cache"] == "hit" and cached["available"] == 0
    given = rank(front.client, task="prequery", country="US", candidates=["e000001", "e000002", "e000001"], k=20)
    assert given["returned"] == given["available"] == 2


def test_unknown_inputs_are_warned_about_not_hidden(front, tables):
    r = rank(
        front.client,
        task="more_like_this",
        country="ZZ",
        source_entity_id="nope",
        user_id=f"new-{uuid.uuid4().hex[:6]}",
        k=5,
    )
    fields = {w["field"] for w in r["warnings"]}
    assert fields == {"source_entity_id", "user_id", "country"}
    assert "nope" in next(w["message"] for w in r["warnings"] if w["field"] == "source_entity_id")
    known = rank(front.client, task="prequery", country="US", k=5, user_id=tables.user_ids[1])
    assert known["warnings"] == []
    unknown_candidates = rank(front.client, task="prequery", country="US", candidates=["e000001", "ghost"])
    assert unknown_candidates["warnings"][0]["field"] == "candidates"
    assert unknown_candidates["warnings"][0]["entity_ids"] == ["ghost"]
    punctuation = rank(front.client, task="search", country="US", query="?!", k=5)
    assert punctuation["items"] == [] and punctuation["warnings"][0]["field"] == "query"


def test_batch_entity_lookup(front, tables):
    a, b = tables.entity_ids[1], tables.entity_ids[2]
    for params in ({"ids": f"{a},{b},nope"}, [("ids", a), ("ids", b), ("ids", "nope")]):
        r = front.client.get("/entities", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [e["entity_id"] for e in body["entities"]] == [a, b] and body["unknown"] == ["nope"]
        assert body["entities"][0] == front.client.get(f"/entities/{a}").json()
    r = front.client.get("/entities", params={"ids": ",".join(f"x{i}" for i in range(501))})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "ids"
    r = front.client.get("/entities")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "ids"


def test_cors_for_the_configured_origin_only(front, client):
    preflight = {
        "Origin": APP_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    r = front.client.options("/rank", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
    r = front.client.post("/rank", json={"task": "prequery", "country": "US"}, headers={"Origin": APP_ORIGIN})
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "server-timing" in r.headers["access-control-expose-headers"].lower()
    r = front.client.post(
        "/rank", json={"task": "prequery", "country": "US"}, headers={"Origin": "http://evil.example"}
    )
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert client.options("/rank", headers=preflight).status_code == 405  # CORS is off unless configured


def test_get_search_is_post_rank_at_cluster_level_and_cacheable(front, tables):
    q = a_query(tables)
    r = front.client.get("/search", params={"q": q, "country": "US", "k": 7})
    assert r.status_code == 200, r.text
    posted = rank(front.client, task="search", country="US", query=q, k=7, personalization="cluster")
    assert [i["entity_id"] for i in r.json()["items"]] == [i["entity_id"] for i in posted["items"]]
    assert r.headers["cache-control"] == "public, max-age=45"
    etag = r.headers["etag"]
    again = front.client.get("/search", params={"q": q, "country": "US", "k": 7}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    mine = front.client.get("/search", params={"q": q, "country": "US", "user_id": "someone"})
    assert mine.headers["cache-control"].startswith("private")
    pre = front.client.get("/prequery", params={"country": "US", "display": "true"})
    assert pre.status_code == 200 and "title" in pre.json()["items"][0]
    source = tables.entity_ids[1]
    mlt = front.client.get("/more_like_this", params={"source_entity_id": source, "country": "US"})
    assert mlt.status_code == 200 and source not in [i["entity_id"] for i in mlt.json()["items"]]
    bad = front.client.get("/search", params={"country": "USA", "k": 0})
    assert bad.status_code == 422
    assert {p["field"] for p in bad.json()["detail"]} == {"q", "country", "k"}


def test_etag_changes_with_the_runtime_catalog(front):
    before = front.client.get("/search", params={"q": "xylo", "country": "US"}).headers["etag"]
    entity = [{"entity_id": f"rt-{uuid.uuid4().hex[:8]}", "title": "Xylophone Nights"}]
    added = front.client.post("/entities", json=entity, headers={"authorization": f"Bearer {TOKEN}"})
    assert added.status_code == 201, added.text
    after = front.client.get("/search", params={"q": "xylo", "country": "US"}, headers={"If-None-Match": before})
    assert after.status_code == 200 and after.headers["etag"] != before
    assert entity[0]["entity_id"] in [i["entity_id"] for i in after.json()["items"]]


def test_full_takes_in_what_the_user_just_engaged_with(front, tables):
    """The titles related to a live click join the candidates of `full` (they can be ranked at all)."""
    user = f"sess-{uuid.uuid4().hex[:6]}"
    before = rank(front.client, task="prequery", country="US", user_id=user, personalization="full", k=500)
    shown = {i["entity_id"] for i in before["items"]}
    us = tables.country_index["US"]
    outside = [e for i, e in enumerate(tables.entity_ids) if i and e not in shown and tables.avail[i, us]]
    clicked = outside[0]
    events = [{"user_id": user, "task": "search", "entity_id": clicked, "action": "play", "query": "x"}]
    assert front.client.post("/events", json=events).status_code == 202
    after = rank(front.client, task="prequery", country="US", user_id=user, personalization="full", k=500)
    assert after["available"] > before["available"]
    after_ids = [i["entity_id"] for i in after["items"]]
    assert set(after_ids) - shown and clicked not in after_ids


def test_docs_work_without_a_cdn(front):
    html = front.client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        r = front.client.get(asset)
        assert r.status_code == 200 and len(r.content) > 1000, asset
    doc = front.client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "#/$defs/" not in str(doc) and "HTTPValidationError" not in str(doc)
    assert doc["paths"]["/entities"]["post"]["security"] == [{"bearer": []}]
    assert "ErrorBody" in str(doc["paths"]["/rank"]["post"]["responses"]["422"])


def test_schemathesis_finds_nothing(front, tmp_path):
    """Every check schemathesis has, against the live service. The operations whose acceptance depends on
    the service's state (loading a bundle by path, routing to models by name) run every check but
    positive-data acceptance: a schema cannot say which paths hold a bundle."""
    st = str(Path(sys.executable).parent / "st")  # the dev extra's schemathesis, next to this Python
    base = [st, "run", f"{front.url}/openapi.json", "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}"]
    base += ["--max-examples", "25", "--seed", "7", "--no-color"]
    stateful = ["--include-path-regex", "^/admin/(models|routing)$", "--include-method-regex", "^(POST|PUT)$"]
    runs = [
        base + ["--exclude-path-regex", "^/admin/"],
        base + ["--include-path-regex", "^/admin/", "--exclude-method-regex", "^(POST|PUT)$"],
        base + stateful + ["--exclude-checks", "positive_data_acceptance"],
    ]
    for cmd in runs:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:]
        assert re.search(r"\d+ passed", done.stdout), done.stdout[-2000:]
    httpx.get(f"{front.url}/readyz").raise_for_status()
