"""Every ranking body the service serves is the documented `RankResponse`: each task and personalization
level, cache miss and hit, the keystroke GETs, display and explain, degraded (deadline), A/B and
interleaved. The schema is the one the running service publishes (/openapi.json), so the document and the
bodies cannot drift apart; its members are closed (additionalProperties false), so an undocumented member
fails too. `RankAnswer.encode` is also checked on its own: the one place a ranking body is written."""

from __future__ import annotations

import uuid
from dataclasses import replace

import jsonschema
import orjson
import pytest

from service.core.answer import RankAnswer
from tests.helpers import LiveServer

TOKEN = "answer-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def live(bundle_dir, second_bundle_dir, redis_url):
    server = LiveServer(bundle_dir, redis_url, {"UNIRANK_ADMIN_TOKEN": TOKEN})
    try:
        server.wait_ready()
        r = server.client.post("/admin/models", json={"name": "b", "path": str(second_bundle_dir)}, headers=AUTH)
        assert r.status_code == 201, r.text
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def validate(live):
    """A validator of RankResponse as the live service documents it ($refs resolved in its document)."""
    document = live.client.get("/openapi.json").json()
    schema = {"$ref": "#/components/schemas/RankResponse", "components": document["components"]}
    validator = jsonschema.Draft202012Validator(schema)

    def check(body: dict) -> dict:
        errors = sorted(validator.iter_errors(body), key=str)
        assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
        return body

    return check


def bodies(task: str, level: str) -> dict:
    q = uuid.uuid4().hex[:1]  # a key no other test cached, so the first answer is a miss
    base = {"task": task, "country": "US", "personalization": level, "k": 5 + int(uuid.uuid4().int % 50)}
    if level != "none":
        base["user_id"] = "u0000010"
    if task == "search":
        base["query"] = "th" + q
    if task == "more_like_this":
        base["source_entity_id"] = "e000010"
    return base


@pytest.mark.parametrize("level", ["none", "cluster", "full"])
@pytest.mark.parametrize("task", ["search", "prequery", "more_like_this"])
def test_each_task_and_level_miss_then_hit(live, validate, task, level):
    body = bodies(task, level)
    first = validate(live.client.post("/rank", json=body).json())
    second = validate(live.client.post("/rank", json=body).json())
    assert first["task"] == task and first["degraded"] is False and first["degraded_reason"] is None
    assert first["model"] == "default" and first["experiment"] is None and first["variant"] is None
    if level != "full":  # cluster-level rankings are cached
        assert (first["cache"], second["cache"]) == ("miss", "hit")
        assert first["items"] == second["items"] and second["returned"] == len(second["items"])


@pytest.mark.parametrize("task", ["search", "prequery", "more_like_this"])
def test_the_keystroke_gets(live, validate, task):
    params = {"country": "US", "user_id": "u0000010", "display": "true"}
    params |= {"search": {"q": "star"}, "more_like_this": {"source_entity_id": "e000010"}}.get(task, {})
    r = live.client.get(f"/{task}", params=params)
    assert r.status_code == 200, r.text
    validate(r.json())


def test_display_explain_candidates_and_warnings(live, validate):
    body = {
        "task": "prequery",
        "country": "ZZ",
        "user_id": "nobody-known",
        "personalization": "full",
        "candidates": ["e000001", "e000002", "not-an-entity"],
        "display": True,
        "explain": True,
    }
    out = validate(live.client.post("/rank", json=body).json())
    assert out["cache"] == "bypass" and out["context"] is not None
    assert {w["field"] for w in out["warnings"]} >= {"country", "user_id", "candidates"}
    known = [i for i in out["items"] if i["entity_id"] != "not-an-entity"]
    assert known and all(i["release_year"] == i["year"] and i["title"] for i in known)


def test_degraded(live, validate):
    body = bodies("search", "cluster")
    r = live.client.post("/rank", json=body, headers={"x-request-timeout-ms": "0.000001"})
    out = validate(r.json())
    assert out["degraded"] is True and out["degraded_reason"] == "deadline" and out["cache"] == "bypass"


@pytest.mark.parametrize("mode", ["ab", "interleave"])
def test_ab_and_interleaved(live, validate, mode):
    routing = {
        "default": "default",
        "experiment": {
            "name": f"answer-{mode}",
            "mode": mode,
            "unit": "request",
            "variants": [{"model": "default", "share": 0.5}, {"model": "b", "share": 0.5}],
        },
    }
    r = live.client.put("/admin/routing", json=routing, headers=AUTH)
    assert r.status_code == 200, r.text
    try:
        seen = set()
        for _ in range(12):
            out = validate(live.client.post("/rank", json=bodies("prequery", "cluster") | {"display": True}).json())
            assert out["experiment"] == f"answer-{mode}"
            seen.add(out["variant"])
            if mode == "interleave":
                assert out["model"] is None and out["variant"] == "interleaved"
                assert {i["variant"] for i in out["items"]} <= {"default", "b"}
        assert seen == ({"interleaved"} if mode == "interleave" else {"default", "b"})
    finally:
        live.client.put("/admin/routing", json={"default": "default"}, headers=AUTH)


def test_encode_is_the_one_body():
    items = orjson.dumps([{"entity_id": "e1", "score": 0.5}])
    answer = RankAnswer(items=items, task="search", cache="hit", model="default", model_version="v1", available=9)
    body = orjson.loads(answer.encode())
    assert body["items"] == [{"entity_id": "e1", "score": 0.5}] and body["available"] == 9
    assert body["degraded"] is False and "context" not in body
    answer.degraded_reason = "deadline"
    answer.shown = orjson.dumps([{"entity_id": "e1", "score": 0.5, "title": "T"}])
    answer.context = {"task": "search"}
    body = orjson.loads(answer.encode())
    assert body["degraded"] is True and body["items"][0]["title"] == "T" and body["context"] == {"task": "search"}


def test_the_body_cut_around_the_request_id_is_encode_with_any_id():
    """A repeated request's body (`service.ranking.repeats`) is `encode()` with the new id put in: even when
    a title, a warning or the explained context spells out a request_id member of its own."""
    decoy = '"request_id":"x"'
    shown = orjson.dumps([{"entity_id": "e1", "score": 0.5, "title": decoy}])
    answer = RankAnswer(
        items=orjson.dumps([{"entity_id": "e1", "score": 0.5}]),
        task="search",
        cache="hit",
        model="default",
        model_version="v1",
        shown=shown,
        warnings=[{"field": "user_id", "message": decoy, "type": "unknown"}],
        context={"request_id": "ctx", "query": decoy},
        request_id="first",
    )
    head, tail = answer.encode_around_request_id()
    for rid in ("0123456789abcdef", "", "f" * 16):
        assert head + rid.encode() + tail == replace(answer, request_id=rid).encode()
        assert orjson.loads(head + rid.encode() + tail)["request_id"] == rid
