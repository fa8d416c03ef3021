"""Roll-out without restarts, over HTTP with a real Redis and two real bundles: several models at once,
A/B by user across two workers and a second replica, interleaving, shadow scoring, refusals that change
nothing, routing that survives a restart, unloading, and a default switched under traffic."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid

import httpx
import pytest

from tests.helpers import LiveServer, fields_of, metric

TOKEN = "rollout-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def control_env() -> dict:
    """The fleet's shared state: one model list and routing, one runtime catalog."""
    return {
        "UNIRANK_ADMIN_TOKEN": TOKEN,
        "UNIRANK_CONTROL_KEY": f"ur:control:rollout:{uuid.uuid4().hex[:8]}",
        "UNIRANK_CATALOG_STREAM": f"ur:entities:rollout:{uuid.uuid4().hex[:8]}",
        "UNIRANK_CONTROL_POLL_S": "0.1",
    }


@pytest.fixture(scope="module")
def replica(bundle_dir, redis_url, control_env):
    """Replica one: two workers."""
    live = LiveServer(bundle_dir, redis_url, control_env, workers=2)
    live.wait_ready()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def loaded(replica, second_bundle_dir):
    r = replica.client.post("/admin/models", json={"name": "b", "path": str(second_bundle_dir)}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def fresh(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    """A request on a new connection, so a multi-worker server's kernel picks any worker."""
    with httpx.Client(base_url=url, timeout=30, headers={"connection": "close"}) as c:
        return c.request(method, path, **kwargs)


def route(live, routing: dict, status: int = 200) -> dict:
    r = live.client.put("/admin/routing", json=routing, headers=AUTH)
    assert r.status_code == status, r.text
    return r.json()


def ab(name: str, unit: str = "user") -> dict:
    variants = [{"model": "default", "share": 0.5}, {"model": "b", "share": 0.5}]
    return {"default": "default", "experiment": {"name": name, "mode": "ab", "unit": unit, "variants": variants}}


def test_load_answers_when_every_worker_of_the_replica_holds_it(replica, loaded, second_bundle_dir):
    assert loaded["name"] == "b" and loaded["tasks"] == ["search", "prequery", "more_like_this"]
    listing = replica.client.get("/admin/models", headers=AUTH).json()
    mine = {w: m for w, m in listing["workers"].items() if w.startswith(replica_id(replica))}
    assert len(mine) == 2 and all(m.get("b") == loaded["version"] for m in mine.values()), listing["workers"]
    names = {m["name"]: m for m in listing["models"]}
    assert set(names) == {"default", "b"} and names["b"]["path"] == str(second_bundle_dir)
    assert names["default"]["routed"] and not names["b"]["routed"]


def replica_id(live) -> str:
    return live.env["UNIRANK_REPLICA_ID"]


def test_ab_by_user_is_the_same_on_every_worker_and_replica(replica, loaded, bundle_dir, redis_url, control_env):
    route(replica, ab("ab-users"))
    users = [f"user-{i}" for i in range(40)]
    body = {"task": "prequery", "country": "US", "k": 5}
    first = {}
    for u in users:
        got = {fresh(replica.url, "POST", "/rank", json=body | {"user_id": u}).json()["variant"] for _ in range(3)}
        assert len(got) == 1, (u, got)
        first[u] = got.pop()
    assert set(first.values()) == {"default", "b"}  # both variants get users
    other = LiveServer(bundle_dir, redis_url, control_env)  # replica two, started after the routing was set
    try:
        other.wait_ready()
        deadline = time.monotonic() + 10
        while other.client.get("/admin/routing", headers=AUTH).json().get("experiment") is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for u in users:
            r = other.client.post("/rank", json=body | {"user_id": u}).json()
            assert r["variant"] == first[u] and r["experiment"] == "ab-users" and r["model"] == first[u]
    finally:
        other.stop()
    anonymous = {replica.client.post("/rank", json=body).json()["variant"] for _ in range(30)}
    assert anonymous == {"default", "b"}  # no user: assigned by request
    route(replica, {"default": "default"})


def test_request_ids_are_echoed_or_generated(replica):
    r = replica.client.post("/rank", json={"task": "prequery", "country": "US", "request_id": "client-42"}).json()
    assert r["request_id"] == "client-42" and r["experiment"] is None and r["variant"] is None
    ids = {
        replica.client.post("/rank", json={"task": "prequery", "country": "US"}).json()["request_id"] for _ in range(5)
    }
    assert len(ids) == 5


def test_interleaving_returns_each_id_once_with_its_variant(replica, loaded):
    variants = [{"model": "default", "share": 0.5}, {"model": "b", "share": 0.5}]
    route(replica, {"default": "default", "experiment": {"name": "il", "mode": "interleave", "variants": variants}})
    teams = set()
    for query in ("th", "st", "a", "mo"):
        r = replica.client.post("/rank", json={"task": "search", "country": "US", "query": query, "k": 10}).json()
        ids = [i["entity_id"] for i in r["items"]]
        assert len(ids) == len(set(ids)) > 0 and r["variant"] == "interleaved" and r["experiment"] == "il"
        assert {i["variant"] for i in r["items"]} <= {"default", "b"}
        counts = [sum(i["variant"] == v for i in r["items"]) for v in ("default", "b")]
        assert abs(counts[0] - counts[1]) <= 1 or min(counts) == 0  # team draft: balanced while both can pick
        teams |= {i["variant"] for i in r["items"]}
    assert teams == {"default", "b"}
    route(replica, {"default": "default"})


def test_shadow_scores_a_copy_and_never_changes_a_response(replica, loaded):
    body = {
        "task": "prequery",
        "country": "US",
        "user_id": "u-shadow",
        "candidates": [f"e{i:06d}" for i in range(1, 60)],
    }
    before = replica.client.post("/rank", json=body).json()
    route(replica, {"default": "default", "shadow": "b"})
    scored = metric(replica.client, "unirank_shadow_total", {"result": "scored"})
    for _ in range(20):
        after = fresh(replica.url, "POST", "/rank", json=body).json()
        assert after["items"] == before["items"] and after["model"] == "default"
    deadline = time.monotonic() + 10
    while metric(replica.client, "unirank_shadow_total", {"result": "scored"}) < scored + 20:
        assert time.monotonic() < deadline, "the shadow did not score every served request"
        time.sleep(0.1)
    assert "unirank_shadow_overlap_at_10_bucket" in replica.client.get("/metrics").text
    route(replica, {"default": "default"})


def test_bad_path_and_corrupted_bundle_are_refused_and_nothing_changes(replica, loaded, second_bundle_dir, tmp_path):
    before = replica.client.get("/admin/models", headers=AUTH).json()
    r = replica.client.post("/admin/models", json={"name": "c", "path": "/nope/nothing"}, headers=AUTH)
    assert r.status_code == 422 and fields_of(r) == ["path"] and "no bundle" in r.json()["detail"][0]["message"]
    r = replica.client.post("/admin/models", json={"name": "c", "path": "0" * 1000}, headers=AUTH)  # ENAMETOOLONG
    assert r.status_code == 422 and fields_of(r) == ["path"] and "File name too long" in r.text
    corrupted = tmp_path / "corrupted"
    shutil.copytree(second_bundle_dir, corrupted)
    onnx = corrupted / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-100] + b"\0" * 100)
    r = replica.client.post("/admin/models", json={"name": "c", "path": str(corrupted)}, headers=AUTH)
    assert r.status_code == 422 and "content hash" in r.json()["detail"][0]["message"] and "model.onnx" in r.text
    older = tmp_path / "older"  # a bundle trained before the lexical features: its graph reads 12 dense columns
    shutil.copytree(second_bundle_dir, older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["features"]["dense"] = manifest["features"]["dense"][:12]
    (older / "manifest.json").write_text(json.dumps(manifest))
    r = replica.client.post("/admin/models", json={"name": "c", "path": str(older)}, headers=AUTH)
    message = r.json()["detail"][0]["message"]
    assert r.status_code == 422 and "retrain" in message and "match_position" in message, r.text
    for bad in ({"name": "default", "path": str(second_bundle_dir)}, {"name": "bad name!", "path": "x"}, {"name": "c"}):
        assert replica.client.post("/admin/models", json=bad, headers=AUTH).status_code == 422
    after = replica.client.get("/admin/models", headers=AUTH).json()
    assert [m["name"] for m in after["models"]] == [m["name"] for m in before["models"]] and after["routing"] == before[
        "routing"
    ]
    assert replica.client.post("/rank", json={"task": "search", "country": "US", "query": "th"}).status_code == 200


def _experiment(*variants: tuple[str, float], mode: str = "ab") -> dict:
    return {"name": "x", "mode": mode, "variants": [{"model": m, "share": share} for m, share in variants]}


@pytest.mark.parametrize(
    ("routing", "field"),
    [
        ({"default": "nope"}, "default"),
        ({"default": "default", "shadow": "nope"}, "shadow"),
        ({"default": "default", "experiment": _experiment(("default", 0.5), ("b", 0.6))}, "experiment.variants"),
        (
            {"default": "default", "experiment": _experiment(("default", 0.5), ("nope", 0.5))},
            "experiment.variants[1].model",
        ),
        (
            {
                "default": "default",
                "experiment": _experiment(("default", 0.4), ("b", 0.3), ("c", 0.3), mode="interleave"),
            },
            "experiment.variants",
        ),
        ({"default": "default", "shadw": "b"}, "shadw"),
    ],
)
def test_invalid_routing_is_a_422_naming_the_field(replica, loaded, routing, field):
    before = replica.client.get("/admin/routing", headers=AUTH).json()
    r = replica.client.put("/admin/routing", json=routing, headers=AUTH)
    assert r.status_code == 422 and field in fields_of(r), r.text
    assert replica.client.get("/admin/routing", headers=AUTH).json() == before


def test_switching_the_default_under_traffic_fails_no_request(replica, loaded):
    failures, done, stop = [], [0], threading.Event()
    bodies = [
        {
            "task": t,
            "country": "US",
            "user_id": f"u{i}",
            "query": "th" if t == "search" else None,
            "source_entity_id": "e000003" if t == "more_like_this" else None,
            "k": 10,
        }
        for i, t in enumerate(["search", "prequery", "more_like_this"] * 4)
    ]

    def hammer(n: int) -> None:
        with httpx.Client(base_url=replica.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/rank", json=bodies[(done[0] + n) % len(bodies)])
                done[0] += 1
                if r.status_code != 200:
                    failures.append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for i in range(16):
        route(replica, {"default": "b" if i % 2 == 0 else "default"})
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and done[0] > 100
    route(replica, {"default": "default"})


def test_a_repeated_request_follows_a_switch_of_the_default(replica, loaded):
    """A worker answers repeated bytes from memory (`service.ranking.repeats`) only while the model that
    answered them is still the default: after a switch, each worker answers with the new default."""
    body = {"task": "search", "country": "US", "query": "th", "k": 11, "personalization": "cluster"}

    def models_answering(n: int = 12) -> set[str]:
        return {fresh(replica.url, "POST", "/rank", json=body).json()["model"] for _ in range(n)}

    for default in ("default", "b", "default"):
        route(replica, {"default": default})
        deadline = time.monotonic() + 5
        while (seen := models_answering()) != {default}:  # every worker polls the routing (0.1 s here)
            assert time.monotonic() < deadline, seen
        for _ in range(3):  # the keep-alive connection's worker, repeating
            assert replica.client.post("/rank", json=body).json()["model"] == default


def test_routing_survives_a_restart(replica, loaded, bundle_dir, redis_url, control_env):
    route(replica, {"default": "b"})
    restarted = LiveServer(bundle_dir, redis_url, control_env)
    try:
        restarted.wait_ready()
        deadline = time.monotonic() + 15
        while (r := restarted.client.post("/rank", json={"task": "prequery", "country": "US"}).json())["model"] != "b":
            assert time.monotonic() < deadline, r
            time.sleep(0.1)
        assert restarted.client.get("/admin/routing", headers=AUTH).json()["default"] == "b"
    finally:
        restarted.stop()
        route(replica, {"default": "default"})


def test_unloading_is_refused_while_routed_then_frees_the_model(replica, loaded):
    route(replica, {"default": "default", "shadow": "b"})
    r = replica.client.delete("/admin/models/b", headers=AUTH)
    assert r.status_code == 409 and r.json()["detail"][0]["type"] == "routed_model"
    assert replica.client.delete("/admin/models/default", headers=AUTH).status_code == 409
    assert replica.client.delete("/admin/models/nope", headers=AUTH).status_code == 404
    route(replica, {"default": "default"})
    assert replica.client.delete("/admin/models/b", headers=AUTH).status_code == 200
    deadline = time.monotonic() + 10
    while True:  # every worker drops it (each polls the model list)
        workers = replica.client.get("/admin/models", headers=AUTH).json()["workers"]
        mine = [m for w, m in workers.items() if w.startswith(replica_id(replica))]
        if len(mine) == 2 and all("b" not in m for m in mine):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)
    route(replica, ab("after-unload"), status=422)
