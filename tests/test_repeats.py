"""Repeated requests (`service.ranking.repeats`): the same bytes asked again while their ranking is cached
are answered from the worker's memory, as the full path would answer them. Over HTTP against the real
service and a real Redis: the answer equals the full path's (POST /rank and the keystroke GETs, display
and explain included) with its own request id, every repeat is logged and counted, a bad header is still
refused, a client's request id is never repeated, and an entity added at run time ends the repeats of the
rankings it changes. The memo's own rules (expiry with the cache's in-memory layer, a routing or model
change, what is never remembered, its bound) are checked on its class."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import orjson
import pytest

from service.core.answer import RankAnswer
from service.core.rollout import Routing
from service.core.schemas import RankRequest
from service.ranking.repeats import MAX_RAW_BYTES, RepeatedRequests
from tests.helpers import LiveServer, fields_of, metric
from unirank.core.impression_log import decode_entry
from unirank.loop.redis_client import redis_client

TOKEN = "repeat-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def live(bundle_dir, redis_url):
    prefix = f"ur:test:repeats:{uuid.uuid4().hex[:8]}"
    env = {
        "UNIRANK_ADMIN_TOKEN": TOKEN,
        "UNIRANK_IMPRESSION_STREAM": f"{prefix}:impressions",
        "UNIRANK_CATALOG_STREAM": f"{prefix}:entities",
        "UNIRANK_IMPRESSION_FLUSH_MS": "10",
    }
    server = LiveServer(bundle_dir, redis_url, env)
    server.wait_ready()
    yield server, env
    server.stop()


def stages(response) -> set[str]:
    return {part.split(";")[0] for part in response.headers["server-timing"].split(", ")}


def post(live, raw: bytes, **headers):
    return live.client.post("/rank", content=raw, headers={"content-type": "application/json", **headers})


def unique_k() -> int:
    return 3 + uuid.uuid4().int % 400  # a cache key no other test used


def without_id(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("request_id", "cache")}


def test_a_repeat_is_the_full_paths_answer_with_its_own_request_id(live, redis_url):
    server, env = live
    body = {
        "task": "search",
        "country": "US",
        "query": "th",
        "k": unique_k(),
        "personalization": "cluster",
        "user_id": "nobody-we-know",
        "display": True,
        "explain": True,
    }
    raw = orjson.dumps(body)
    first = post(server, raw)
    full_hit = post(server, orjson.dumps(dict(reversed(body.items()))))  # other bytes: the full path, a hit
    repeats = [post(server, raw) for _ in range(3)]
    assert "parse" in stages(first) and "parse" in stages(full_hit)
    assert all(stages(r) == {"cache", "total"} for r in repeats)  # no parsing, context or look-up
    assert (first.json()["cache"], full_hit.json()["cache"]) == ("miss", "hit")
    for r in repeats:
        assert r.status_code == 200 and r.json()["cache"] == "hit"
        assert without_id(r.json()) == without_id(full_hit.json())
        assert r.json()["warnings"] and r.json()["context"] and r.json()["items"][0]["title"]
    answers = [first, full_hit, *repeats]
    ids = [r.json()["request_id"] for r in answers]
    assert len(set(ids)) == len(ids)
    # every repeat is in the impression log under its own id, as served
    log = redis_client(redis_url)
    deadline = time.monotonic() + 10
    while not set(ids) <= (logged := _logged(log, env["UNIRANK_IMPRESSION_STREAM"])).keys():
        assert time.monotonic() < deadline, "repeats missing from the impression log"
        time.sleep(0.05)
    for r in answers:
        imp = logged[r.json()["request_id"]]
        assert [i["entity_id"] for i in imp.items] == [i["entity_id"] for i in r.json()["items"]]
        assert (imp.task, imp.query, imp.user, imp.model) == ("search", "th", "nobody-we-know", "default")
    assert logged[ids[-1]].ts >= logged[ids[0]].ts


def _logged(client, stream: str) -> dict:
    return {imp.rid: imp for _, fields in client.xrange(stream) for imp in decode_entry(fields)}


def test_repeats_are_counted_as_cache_hits_of_the_workers_memory(live):
    server, _ = live
    raw = orjson.dumps({"task": "prequery", "country": "US", "k": unique_k(), "personalization": "cluster"})
    post(server, raw)
    hits = metric(server.client, "unirank_cache_total", {"model": "default", "result": "hit"})
    local = metric(server.client, "unirank_cache_layer_hits_total", {"layer": "local"})
    for _ in range(5):
        assert stages(post(server, raw)) == {"cache", "total"}
    time.sleep(1.2)  # the request path's counters are flushed every second
    assert metric(server.client, "unirank_cache_total", {"model": "default", "result": "hit"}) >= hits + 5
    assert metric(server.client, "unirank_cache_layer_hits_total", {"layer": "local"}) >= local + 5


def test_a_repeat_still_refuses_a_bad_header_and_ignores_a_short_budget(live):
    server, _ = live
    raw = orjson.dumps(
        {"task": "search", "country": "US", "query": "mo", "k": unique_k(), "personalization": "cluster"}
    )
    post(server, raw)
    for bad in ("soon", "-5", "0"):
        r = post(server, raw, **{"x-request-timeout-ms": bad})
        assert r.status_code == 422 and fields_of(r) == ["X-Request-Timeout-Ms"]
    r = post(server, raw, **{"x-request-timeout-ms": "0.000001"})  # a cached answer is served whatever the budget
    assert r.status_code == 200 and r.json()["degraded"] is False and stages(r) == {"cache", "total"}


def test_a_clients_request_id_is_echoed_never_repeated(live):
    server, _ = live
    body = {"task": "search", "country": "US", "query": "st", "k": unique_k(), "personalization": "cluster"}
    raw = orjson.dumps(body | {"request_id": "mine-7"})
    answers = [post(server, raw) for _ in range(3)]
    assert [r.json()["request_id"] for r in answers] == ["mine-7"] * 3
    assert all("parse" in stages(r) for r in answers)


def test_the_keystroke_get_repeats_with_its_etag(live):
    server, _ = live
    params = {"q": "th", "country": "US", "k": str(unique_k())}
    first = server.client.get("/search", params=params)
    again = server.client.get("/search", params=params)
    assert stages(again) == {"cache", "total"} and "parse" in stages(first)
    assert again.headers["etag"] == first.headers["etag"] and again.headers["cache-control"].startswith("public")
    assert without_id(again.json()) == without_id(first.json()) and again.json()["cache"] == "hit"
    assert again.json()["request_id"] != first.json()["request_id"]
    not_modified = server.client.get("/search", params=params, headers={"if-none-match": first.headers["etag"]})
    assert not_modified.status_code == 304 and not_modified.headers["etag"] == first.headers["etag"]
    # the GET's answer is POST /rank's at cluster level
    body = {"task": "search", "country": "US", "query": "th", "k": int(params["k"]), "personalization": "cluster"}
    assert [i["entity_id"] for i in post(server, orjson.dumps(body)).json()["items"]] == [
        i["entity_id"] for i in again.json()["items"]
    ]


def test_an_entity_added_at_run_time_ends_the_repeats_it_changes(live):
    server, _ = live
    word = "qu" + uuid.uuid4().hex[:6].translate(str.maketrans("0123456789", "ghijklmnop"))
    raw = orjson.dumps({"task": "search", "country": "US", "query": word, "k": 10, "personalization": "none"})
    assert post(server, raw).json()["items"] == []
    repeat = post(server, raw)
    assert repeat.json()["items"] == [] and stages(repeat) == {"cache", "total"}
    eid = f"rt-{uuid.uuid4().hex[:8]}"
    r = server.client.post("/entities", json=[{"entity_id": eid, "title": f"{word} rising"}], headers=AUTH)
    assert r.status_code == 201, r.text
    after = post(server, raw)
    assert [i["entity_id"] for i in after.json()["items"]] == [eid] and "parse" in stages(after)


# ---- the memo's own rules ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _model(version: str = "v1"):
    """What the memo reads of a served model: its identity and its bundle's cache version."""
    return SimpleNamespace(name="default", bundle=SimpleNamespace(cache_version=version))


def _answer(fresh_until: float | None = 130.0, **changes) -> RankAnswer:
    return RankAnswer(b"[]", "search", "hit", "default", "v1", fresh_until=fresh_until, **changes)


REQUEST = RankRequest(task="search", country="US", query="th")


def test_the_memo_serves_while_the_cached_ranking_is_live_and_the_model_and_routing_unchanged():
    clock, routing, model = Clock(), Routing(), _model()
    memo = RepeatedRequests(10, clock)
    models = {"default": model}
    memo.remember(b"a", REQUEST, _answer(), model, routing)
    assert memo.lookup(b"a", routing, models).request is REQUEST
    clock.now = 129.9
    assert memo.lookup(b"a", routing, models) is not None
    clock.now = 130.0  # the in-memory layer's expiry of that ranking
    assert memo.lookup(b"a", routing, models) is None and len(memo) == 0

    clock.now = 100.0
    memo.remember(b"b", REQUEST, _answer(), model, routing)
    assert memo.lookup(b"b", Routing(), models) is None  # a routing change replaces the routing
    memo.remember(b"c", REQUEST, _answer(), model, routing)
    assert memo.lookup(b"c", routing, {"default": _model()}) is None  # the default reloaded
    memo.remember(b"d", REQUEST, _answer(), model, routing)
    model.bundle.cache_version = "v1+2"  # an entity added at run time
    assert memo.lookup(b"d", routing, models) is None


def test_the_memo_never_keeps_what_cannot_repeat_and_keeps_at_most_its_size():
    clock, routing, model = Clock(), Routing(), _model()
    memo = RepeatedRequests(3, clock)
    memo.remember(b"x", REQUEST, _answer(fresh_until=None), model, routing)  # not from the in-memory layer
    memo.remember(b"y", REQUEST, _answer(degraded_reason="deadline"), model, routing)
    memo.remember(b"z", REQUEST.model_copy(update={"request_id": "mine"}), _answer(), model, routing)
    memo.remember(b"w" * (MAX_RAW_BYTES + 1), REQUEST, _answer(), model, routing)
    variants = [{"model": "default", "share": 0.5}, {"model": "b", "share": 0.5}]
    experiment = Routing.model_validate(
        {"default": "default", "experiment": {"name": "e", "mode": "ab", "unit": "request", "variants": variants}}
    )
    memo.remember(b"v", REQUEST, _answer(), model, experiment)
    assert len(memo) == 0
    for raw in (b"1", b"2", b"3", b"4"):
        memo.remember(raw, REQUEST, _answer(), model, routing)
    assert len(memo) == 3 and memo.lookup(b"1", routing, {"default": model}) is None  # the oldest went
    assert RepeatedRequests(0, clock).remember(b"1", REQUEST, _answer(), model, routing) is None
