"""Resilience, over HTTP with real Redis servers: admission control, deadlines and model failures answered
with the fallback ranking, the Redis circuit breaker (Redis really stopped with SIGSTOP), the memory
policy (a full cache Redis evicts, events and the catalogue are still stored), strict input, the ingest
token and the body limit. Timings are the fault suite's (`unirank chaos`), not asserted here."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from loadtest.processes import RedisServer
from service.api import create_app
from service.core.settings import Settings
from tests.helpers import LiveServer, fields_of, metric
from unirank.core.history import history_key

CANDIDATES = [f"e{i:06d}" for i in range(1, 201)]


def wait_for(predicate, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return value


async def _burst(url: str, n: int, body: dict) -> tuple[list[httpx.Response], list[int]]:
    """n concurrent /rank requests, and /healthz statuses taken while they run."""
    limits = httpx.Limits(max_connections=n + 8)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        ranks = [asyncio.create_task(client.post("/rank", json=body)) for _ in range(n)]
        await asyncio.sleep(0.01)
        health = [(await client.get("/healthz")).status_code for _ in range(5)]
        return await asyncio.gather(*ranks), health


def test_admission_answers_an_overload_with_fast_503s_and_keeps_health_up(bundle_dir, redis_url):
    live = LiveServer(bundle_dir, redis_url, {"UNIRANK_MAX_IN_FLIGHT": "4"})
    try:
        live.wait_ready()
        body = {"task": "prequery", "country": "US", "user_id": "u0000001", "candidates": CANDIDATES}
        answers, health = asyncio.run(_burst(live.url, 200, body))
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 503} and codes.count(503) >= 100, codes
        rejected = next(r for r in answers if r.status_code == 503)
        assert rejected.headers["retry-after"] == "1" and rejected.json()["detail"][0]["type"] == "overloaded"
        assert all(r.json()["items"] for r in answers if r.status_code == 200)
        assert health == [200] * 5
        assert metric(live.client, "unirank_rejected_total", {"endpoint": "/rank"}) == codes.count(503)
    finally:
        live.stop()


async def _rank_burst_with_events(url: str, n: int, body: dict, batches: list[list[dict]]):
    """n concurrent /rank requests and, while they run, the event batches, all at once."""
    limits = httpx.Limits(max_connections=n + len(batches) + 8)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        ranks = [asyncio.create_task(client.post("/rank", json=body)) for _ in range(n)]
        await asyncio.sleep(0.01)
        events = [asyncio.create_task(client.post("/events", json=batch)) for batch in batches]
        return await asyncio.gather(*ranks), await asyncio.gather(*events)


def _click_batches(prefix: str, n: int) -> list[list[dict]]:
    click = {"task": "search", "entity_id": "e000001", "action": "click"}
    return [[click | {"user_id": f"{prefix}-{i}"}] for i in range(n)]


def test_a_ranking_overload_never_sheds_feedback(bundle_dir, redis_url):
    """/rank and /events have budgets of their own: rankings shed under their overload, every click kept."""
    live = LiveServer(bundle_dir, redis_url, {"UNIRANK_MAX_IN_FLIGHT": "4"})
    try:
        live.wait_ready()
        body = {"task": "prequery", "country": "US", "user_id": "u0000001", "candidates": CANDIDATES}
        prefix = f"budget-{uuid.uuid4().hex[:8]}"
        ranks, events = asyncio.run(_rank_burst_with_events(live.url, 200, body, _click_batches(prefix, 30)))
        codes = [r.status_code for r in ranks]
        assert codes.count(503) >= 100, codes  # the rankings were over their budget ...
        assert [r.status_code for r in events] == [202] * 30  # ... and no click was refused for it
        store = redis.Redis.from_url(redis_url)
        assert all(store.llen(history_key(f"{prefix}-{i}")) == 1 for i in range(30))
        assert metric(live.client, "unirank_rejected_total", {"endpoint": "/events"}) == 0
    finally:
        live.stop()


def test_feedback_has_its_own_limit(bundle_dir, redis_url):
    """A flood of event batches is refused on its own budget, and rankings are not shed for it."""
    live = LiveServer(bundle_dir, redis_url, {"UNIRANK_EVENTS_MAX_IN_FLIGHT": "1"})
    try:
        live.wait_ready()
        body = {"task": "prequery", "country": "US", "user_id": "u0000001", "candidates": CANDIDATES[:20]}
        prefix = f"flood-{uuid.uuid4().hex[:8]}"
        ranks, events = asyncio.run(_rank_burst_with_events(live.url, 4, body, _click_batches(prefix, 60)))
        statuses = [r.status_code for r in events]
        assert set(statuses) == {202, 503} and [r.status_code for r in ranks] == [200] * 4, statuses
        refused = next(r for r in events if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and refused.json()["detail"][0]["type"] == "overloaded"
        assert metric(live.client, "unirank_rejected_total", {"endpoint": "/events"}) == statuses.count(503)
    finally:
        live.stop()


def test_a_spent_budget_answers_with_the_fallback_ranking(client):
    body = {
        "task": "search",
        "country": "US",
        "query": f"th{uuid.uuid4().hex[:2]}",
        "k": 8,
        "personalization": "cluster",
    }
    body["query"] = "th"  # titles start with it
    for _ in range(20):  # a cached answer is served whatever the budget: find a k no other test cached
        body["k"] = 3 + uuid.uuid4().int % 400
        r = client.post("/rank", json=body, headers={"x-request-timeout-ms": "0.000001"})
        out = r.json()
        if out.get("cache") != "hit":
            break
    assert r.status_code == 200 and out["degraded"] is True and out["degraded_reason"] == "deadline"
    scores = [i["score"] for i in out["items"]]
    assert out["items"] and scores == sorted(scores, reverse=True) and out["cache"] == "bypass"
    titles = [client.get(f"/entities/{i['entity_id']}").json()["title"].lower() for i in out["items"][:3]]
    assert any(t.startswith("th") or " th" in t for t in titles)  # query match first, then popularity
    normal = client.post("/rank", json=body)  # the same request with time to spare is the model's ...
    assert normal.status_code == 200 and normal.json()["degraded"] is False
    cached = client.post("/rank", json=body, headers={"x-request-timeout-ms": "0.000001"})  # ... and a hit stays one
    assert cached.json()["cache"] == "hit" and cached.json()["degraded"] is False
    assert metric(client, "unirank_degraded_total", {"reason": "deadline"}) >= 1
    for bad in ("soon", "-5", "0", "nan"):
        r = client.post("/rank", json=body, headers={"x-request-timeout-ms": bad})
        assert r.status_code == 422 and fields_of(r) == ["X-Request-Timeout-Ms"]


def test_a_failing_model_degrades_instead_of_a_500(bundle_dir, redis_url):
    settings = Settings(
        bundle=str(bundle_dir), redis_url=redis_url, control_key=f"ur:control:test:{uuid.uuid4().hex[:8]}"
    )
    with TestClient(create_app(settings)) as api:
        wait_for(lambda: api.get("/readyz").status_code == 200)
        scorer = api.app.state.unirank.fleet.models["default"].bundle.scorer

        def broken(inputs):
            raise RuntimeError("the session is gone")

        scorer.score = broken  # a fault in the model's runtime
        for body in (
            {"task": "prequery", "country": "US", "user_id": "u0000002", "k": 5},
            {"task": "more_like_this", "country": "US", "source_entity_id": "e000004", "k": 5},
            {"task": "prequery", "country": "US", "candidates": CANDIDATES[:20], "k": 5},
        ):
            r = api.post("/rank", json=body)
            assert r.status_code == 200 and r.json()["degraded_reason"] == "model_error" and len(r.json()["items"]) == 5
            assert "e000004" not in [i["entity_id"] for i in r.json()["items"]] or body["task"] != "more_like_this"


def test_the_circuit_breaker_stops_calling_a_hung_redis_and_closes_after_it(bundle_dir):
    own = RedisServer()
    live = LiveServer(bundle_dir, own.url, {"UNIRANK_REDIS_BREAKER_OPEN_S": "1", "UNIRANK_EVENTS_TIMEOUT_S": "0.2"})
    event = [{"user_id": "u1", "task": "search", "entity_id": "e000001", "action": "click"}]
    try:
        live.wait_ready()
        os.kill(own.proc.pid, signal.SIGSTOP)  # hung, not refused: every call would wait for its timeout
        body = {"task": "prequery", "country": "US", "user_id": "u0000003", "candidates": CANDIDATES[:50]}
        for _ in range(10):
            assert live.client.post("/rank", json=body).status_code == 200
        ready = live.client.get("/readyz").json()
        assert ready["redis_breaker"] == "open" and ready["redis"].startswith("circuit open")
        assert metric(live.client, "unirank_errors_total", {"type": "redis_BreakerOpen"}) >= 5  # calls not attempted
        r = live.client.post("/events", json=event)
        assert r.status_code == 503 and r.headers["retry-after"]  # nothing accepted unstored
        os.kill(own.proc.pid, signal.SIGCONT)
        wait_for(lambda: live.client.post("/events", json=event).status_code == 202)  # a probe closed it
        assert live.client.get("/readyz").json()["redis_breaker"] == "closed"
    finally:
        os.kill(own.proc.pid, signal.SIGCONT)
        live.stop()
        own.stop()


def test_a_full_cache_redis_evicts_while_events_and_the_catalogue_are_stored(bundle_dir):
    cache = RedisServer(extra_args=("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"))
    state = RedisServer(extra_args=("--maxmemory-policy", "noeviction"))
    live = LiveServer(
        bundle_dir,
        state.url,
        {"UNIRANK_CACHE_REDIS_URL": cache.url, "UNIRANK_ADMIN_TOKEN": "t", "UNIRANK_LOCAL_CACHE_SIZE": "0"},
    )
    cache_client, state_client = redis.Redis.from_url(cache.url), redis.Redis.from_url(state.url)
    try:
        live.wait_ready()
        letters = "abcdefghijklmnopqrstuvwxyz"
        queries = [a + b for a in letters for b in letters]
        i = 0
        while int(cache_client.info("stats")["evicted_keys"]) == 0:  # distinct keys until the cache is full
            body = {"task": "search", "country": "US", "query": queries[i % len(queries)], "k": 100 + i % 300}
            live.client.post("/rank", json=body | {"personalization": "none"})
            i += 1
            assert i < 20_000
        assert int(cache_client.info("memory")["used_memory"]) <= 4 * 2**20
        events = [{"user_id": "kept", "task": "search", "entity_id": "e000001", "action": "click"}]
        assert live.client.post("/events", json=events).status_code == 202
        entity = [{"entity_id": f"rt-{uuid.uuid4().hex[:6]}", "title": "Eviction Survivor"}]
        assert live.client.post("/entities", json=entity, headers={"authorization": "Bearer t"}).status_code == 201
        assert state_client.lrange(history_key("kept"), 0, -1) == [b"e000001|1"]
        assert state_client.xlen("ur:entities") >= 1
        assert not any(k.startswith(b"ur:rank:") for k in state_client.scan_iter(count=1000))  # the cache lives apart
    finally:
        live.stop()
        cache.stop()
        state.stop()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/rank", {"task": "prequery", "country": "US", "persnalization": "full"}, "persnalization"),
        (
            "/events",
            [{"user_id": "u", "task": "search", "entity_id": "e1", "action": "click", "ts": 1e20}],
            "events[0].ts",
        ),
        (
            "/events",
            [{"user_id": "u", "task": "search", "entity_id": "e1", "action": "click", "ts": 5}],
            "events[0].ts",
        ),
        (
            "/events",
            [{"user_id": "u", "task": "search", "entity_id": "e1", "action": "click", "tss": 5}],
            "events[0].tss",
        ),
        (
            "/events",
            [{"user_id": "u", "task": "search", "entity_id": "e1", "action": "click", "ts": "yesterday"}],
            "events[0].ts",
        ),
    ],
)
def test_strict_input_names_what_is_wrong(client, path, body, field):
    r = client.post(path, json=body)
    assert r.status_code == 422 and field in fields_of(r), r.text


def test_event_times_may_be_iso_8601(client):
    events = [
        {
            "user_id": f"u-iso-{uuid.uuid4().hex[:6]}",
            "task": "search",
            "entity_id": "e000001",
            "action": "click",
            "ts": "2026-01-02T03:04:05Z",
        }
    ]
    assert client.post("/events", json=events).status_code == 202


def test_the_ingest_token_guards_events_and_the_body_limit_holds(bundle_dir, redis_url):
    live = LiveServer(bundle_dir, redis_url, {"UNIRANK_INGEST_TOKEN": "ingest-1", "UNIRANK_MAX_BODY_BYTES": "65536"})
    event = [{"user_id": "u", "task": "search", "entity_id": "e000001", "action": "click"}]
    try:
        live.wait_ready()
        r = live.client.post("/events", json=event)
        assert r.status_code == 401 and "ingest token" in r.json()["detail"][0]["message"]
        assert live.client.post("/events", json=event, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert live.client.post("/events", json=event, headers={"authorization": "Bearer ingest-1"}).status_code == 202
        assert live.client.post("/rank", json={"task": "prequery", "country": "US"}).status_code == 200  # /rank is open
        big = b'{"task":"prequery","country":"US","candidates":["' + b"x" * 100_000 + b'"]}'
        r = live.client.post("/rank", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"][0]["message"]
    finally:
        live.stop()
