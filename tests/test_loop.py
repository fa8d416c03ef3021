"""The loop, with a real service and a real Redis: every answer logged (and the log capped, and dropped
rather than waited for when the buffer is full), a click credited to the exact impression, the export
read back by training, simulated users, and the experiment report on constructed logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import LiveServer, metric, s3_client
from unirank.core.impression_log import Feedback, Impression, decode_entry
from unirank.core.schema import events_path, read_entities, read_events
from unirank.loop.experiment import experiment_requests, p_value, power, report
from unirank.loop.logs import Log, export_log, request_number, sink
from unirank.loop.redis_client import redis_client

TOKEN = "loop-token"


def streams(prefix: str) -> dict:
    return {
        "UNIRANK_IMPRESSION_STREAM": f"{prefix}:impressions",
        "UNIRANK_FEEDBACK_STREAM": f"{prefix}:feedback",
        "UNIRANK_CATALOG_STREAM": f"{prefix}:entities",
    }


def export_streams(env: dict) -> dict:
    return {
        "impressions_stream": env["UNIRANK_IMPRESSION_STREAM"],
        "feedback_stream": env["UNIRANK_FEEDBACK_STREAM"],
        "catalog_stream": env["UNIRANK_CATALOG_STREAM"],
    }


@pytest.fixture(scope="module")
def logged(bundle_dir, redis_url):
    env = streams(f"ur:test:{uuid.uuid4().hex[:8]}") | {
        "UNIRANK_ADMIN_TOKEN": TOKEN,
        "UNIRANK_IMPRESSION_FLUSH_MS": "10",
    }
    live = LiveServer(bundle_dir, redis_url, env)
    live.wait_ready()
    yield live, env, redis_client(redis_url)
    live.stop()


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return value


def logged_records(client, stream: str) -> dict[str, Impression]:
    return {imp.rid: imp for _, f in client.xrange(stream) for imp in decode_entry(f)}


def test_every_answer_is_logged_cache_hits_included(logged):
    live, env, client = logged
    bodies = [{"task": "search", "country": "US", "query": "th", "k": 7, "personalization": "cluster"}] * 3 + [
        {"task": "prequery", "country": "GB", "user_id": "u0000003", "k": 5},
        {"task": "more_like_this", "country": "US", "source_entity_id": "e000002", "k": 4},
        {"task": "prequery", "country": "US", "candidates": ["e000001", "e000009"], "request_id": "mine-1"},
    ]
    answers = [live.client.post("/rank", json=b).json() for b in bodies]
    assert [a["cache"] for a in answers[:3]] == ["miss", "hit", "hit"]
    records = wait_for(
        lambda: (
            (r := logged_records(client, env["UNIRANK_IMPRESSION_STREAM"]))
            and all(a["request_id"] in r for a in answers)
            and r
        )
    )
    for body, answer in zip(bodies, answers, strict=True):
        imp = records[answer["request_id"]]
        assert [i["entity_id"] for i in imp.items] == [i["entity_id"] for i in answer["items"]]
        assert [i["score"] for i in imp.items] == [i["score"] for i in answer["items"]]
        assert (imp.task, imp.country, imp.user, imp.query) == (
            body["task"],
            body["country"],
            body.get("user_id"),
            body.get("query"),
        )
        assert imp.version == answer["model_version"] and imp.model == "default" and imp.level
    assert "mine-1" in records and records["mine-1"].source is None


def test_a_click_is_credited_to_the_exact_impression(logged, bundle_dir, tmp_path):
    live, env, client = logged
    answer = live.client.post("/rank", json={"task": "prequery", "country": "US", "user_id": "u0000011", "k": 6}).json()
    clicked = answer["items"][2]["entity_id"]
    events = [
        {
            "user_id": "u0000011",
            "task": "prequery",
            "entity_id": clicked,
            "action": "click",
            "request_id": answer["request_id"],
            "position": 2,
        },
        {
            "user_id": "u0000011",
            "task": "prequery",
            "entity_id": clicked,
            "action": "play",
            "request_id": answer["request_id"],
            "position": 2,
        },
    ]
    assert live.client.post("/events", json=events).status_code == 202
    # the same entity shown in another answer, to the same user, is not clicked there
    other = live.client.post(
        "/rank", json={"task": "prequery", "country": "US", "user_id": "u0000011", "candidates": [clicked, "e000001"]}
    ).json()
    wait_for(
        lambda: (
            answer["request_id"] in logged_records(client, env["UNIRANK_IMPRESSION_STREAM"])
            and other["request_id"] in logged_records(client, env["UNIRANK_IMPRESSION_STREAM"])
        )
    )
    out = tmp_path / "export"
    export_log(client, out, bundle_dir, progress=False, **export_streams(env))
    table = read_events(events_path(out)).to_pylist()
    extra = pq.read_table(events_path(out), columns=["request_key", "position"]).to_pylist()
    rows = [r | e for r, e in zip(table, extra, strict=True)]
    mine = [r for r in rows if r["request_key"] == answer["request_id"]]
    assert [r["position"] for r in mine] == list(range(6))
    assert [(r["clicked"], r["played"]) for r in mine] == [(p == 2, p == 2) for p in range(6)]
    assert all(r["request_id"] == request_number(answer["request_id"]) for r in mine)
    assert not any(r["clicked"] for r in rows if r["request_key"] == other["request_id"])


def test_the_log_is_capped_and_a_full_buffer_drops_instead_of_waiting(bundle_dir, redis_url):
    env = streams(f"ur:test:{uuid.uuid4().hex[:8]}") | {"UNIRANK_IMPRESSION_LOG_MAX_BYTES": "20000"}
    client = redis_client(redis_url)
    live = LiveServer(bundle_dir, redis_url, env | {"UNIRANK_IMPRESSION_FLUSH_MS": "10"})
    try:
        live.wait_ready()
        for i in range(400):
            live.client.post("/rank", json={"task": "prequery", "country": "US", "k": 1 + i % 5})
        wait_for(lambda: metric(live.client, "unirank_impressions_total", {"result": "written"}) >= 400)
        # 20 kB hold ~50 entries of a few answers each; "MAXLEN ~" trims whole nodes (100 entries)
        assert client.xlen(env["UNIRANK_IMPRESSION_STREAM"]) <= 200
    finally:
        live.stop()
    slow = LiveServer(
        bundle_dir, redis_url, env | {"UNIRANK_IMPRESSION_BUFFER": "5", "UNIRANK_IMPRESSION_FLUSH_MS": "60000"}
    )
    try:
        slow.wait_ready()
        codes = [slow.client.post("/rank", json={"task": "prequery", "country": "US"}).status_code for _ in range(20)]
        assert codes == [200] * 20
        assert metric(slow.client, "unirank_impressions_total", {"result": "dropped"}) == 15
    finally:
        slow.stop()


def test_simulated_traffic_exports_to_data_that_trains(logged, bundle_dir, data_dir, tmp_path):
    from model_export.train import TrainConfig, train_bundle
    from unirank.loop.simulate import World, pick_users, simulate

    live, env, client = logged
    world = World(data_dir)
    assert pick_users(world, 12, seed=3) == pick_users(World(data_dir), 12, seed=3)  # the same users, same tastes
    assert np.array_equal(world.cat.taste, World(data_dir).cat.taste)
    first = simulate(live.url, data_dir, users=12, sessions=4, duration_s=60, seed=3, progress=False)
    assert first["errors"] == 0 and first["sessions"] == 48 and sum(first["clicks"].values()) > 0
    assert set(first["requests"]) == {"search", "prequery", "more_like_this"}
    out = tmp_path / "served"
    state = export_log(client, out, bundle_dir, progress=False, **export_streams(env))
    rows_then = state["rows"]
    live.client.post("/rank", json={"task": "prequery", "country": "US"})
    time.sleep(0.2)
    state = export_log(client, out, bundle_dir, progress=False, **export_streams(env))  # resumes after the last one
    assert state["this_run"]["impressions"] >= 1 and state["rows"] == rows_then + state["this_run"]["rows"]
    events = read_events(events_path(out))
    assert (
        # an answer with no items (a search that found nothing) is an impression without rows
        events.num_rows == state["rows"]
        and 0 < len(set(events.column("request_id").to_pylist())) <= state["impressions"]
    )
    assert read_entities(out / "entities.parquet").num_rows >= 600
    bundle = tmp_path / "from-served"
    manifest = train_bundle(out, bundle, TrainConfig(personalization="full", epochs=1), log=lambda *_: None)
    assert manifest["training_data"]["events"] == events.num_rows and (bundle / "model.onnx").is_file()


def test_simulated_users_with_session_intent_search_then_come_back_home(logged, data_dir, tmp_path):
    """A world generated with session intent: every session of a simulated user (share 1.0) is an intent
    session, a search then a home visit after it, against the live service; without it, as before."""
    import json
    import shutil

    from unirank.loop.simulate import World, simulate

    live, _, _ = logged
    world = tmp_path / "intent-world"
    world.mkdir()
    summary = json.loads((data_dir / "synth.json").read_text())
    summary["params"]["session_intent"] = 1.0
    (world / "synth.json").write_text(json.dumps(summary))
    shutil.copy(data_dir / "entities.parquet", world / "entities.parquet")
    assert np.array_equal(World(world).cat.taste, World(data_dir).cat.taste)  # the same users and catalogue
    done = simulate(live.url, world, users=6, sessions=3, duration_s=60, seed=7, progress=False)
    assert done["errors"] == 0 and done["sessions"] == 18
    assert done["requests"]["search"] >= 18 and done["requests"]["prequery"] >= 18  # each: a search, then home


def test_the_sink_moves_the_log_and_trims_the_streams(logged, bundle_dir, tmp_path):
    live, env, client = logged
    for _ in range(5):
        live.client.post("/rank", json={"task": "prequery", "country": "US"})
    time.sleep(0.2)
    before = client.xlen(env["UNIRANK_IMPRESSION_STREAM"])
    sink(
        client,
        tmp_path / "sunk",
        bundle_dir,
        every_s=0,
        settle_s=0,
        rounds=1,
        log=lambda *_: None,
        **export_streams(env),
    )
    assert client.xlen(env["UNIRANK_IMPRESSION_STREAM"]) <= 1 < before  # the last one stays as the resume mark
    assert read_events(events_path(tmp_path / "sunk")).num_rows > 0


def test_the_sink_writes_to_object_storage_that_unirank_train_reads(bundle_dir, data_dir, redis_url, s3_env, tmp_path):
    """A replica's sink needs no shared disk: partitions go to an S3 bucket (moto), and `unirank train
    --data s3://...` trains from them (mirrored into its data cache)."""
    from unirank.loop.simulate import simulate

    env = streams(f"ur:test:{uuid.uuid4().hex[:8]}") | {"UNIRANK_IMPRESSION_FLUSH_MS": "10"}
    s3_client(s3_env).create_bucket(Bucket="served")
    live = LiveServer(bundle_dir, redis_url, env)
    try:
        live.wait_ready()
        done = simulate(live.url, data_dir, users=12, sessions=4, duration_s=60, seed=5, progress=False)
        assert done["errors"] == 0 and sum(done["clicks"].values()) > 0
        time.sleep(0.2)
    finally:
        live.stop()
    client = redis_client(redis_url)
    before = client.xlen(env["UNIRANK_IMPRESSION_STREAM"])
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_env.items():
            patch.setenv(name, value)
        sink(
            client,
            "s3://served/log",
            bundle_dir,
            every_s=0,
            settle_s=0,
            rounds=1,
            log=lambda *_: None,
            **export_streams(env),
        )
    assert client.xlen(env["UNIRANK_IMPRESSION_STREAM"]) <= 1 < before
    keys = [o["Key"] for o in s3_client(s3_env).list_objects_v2(Bucket="served", Prefix="log/")["Contents"]]
    assert {"log/entities.parquet", "log/export-state.json"} <= set(keys)
    parts = [k for k in keys if k.startswith("log/events/date=") and k.endswith(".parquet")]
    assert parts and not [k for k in keys if k.endswith(".tmp")]
    cache, bundle = tmp_path / "data-cache", tmp_path / "from-s3"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "unirank.cli",
            "train",
            "--data",
            "s3://served/log",
            "--out",
            str(bundle),
            "--epochs",
            "1",
        ],
        env=os.environ | s3_env | {"UNIRANK_DATA_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    state = json.loads(next(cache.glob("*/export-state.json")).read_text())
    assert manifest["training_data"]["events"] == state["rows"] > 0 and (bundle / "model.onnx").is_file()


# ---- the report on constructed logs ---------------------------------------------------------------------


def constructed_log(
    ctr: dict[str, float], users: int = 3000, requests_per_user: int = 3, seed: int = 0, interleave: bool = False
) -> Log:
    """A/B (variant by user) or interleaved (team per item) traffic where each variant's items are clicked
    with the given probability."""
    rng = np.random.default_rng(seed)
    impressions, feedback, names = [], [], list(ctr)
    for u in range(users):
        variant = names[u % len(names)]
        for q in range(requests_per_user):
            rid = f"r{u}-{q}"
            if interleave:  # team draft: in each pair of slots a coin decides which team picks first
                teams = [t for _ in range(5) for t in (names if rng.random() < 0.5 else names[::-1])]
            else:
                teams = [variant] * 10
            items = [
                {"entity_id": f"e{i}", "score": 1.0 - i / 10} | ({"variant": t} if interleave else {})
                for i, t in enumerate(teams)
            ]
            imp = Impression(
                rid,
                1_000 + u,
                None if interleave else variant,
                "v",
                "exp",
                "interleaved" if interleave else variant,
                "prequery",
                "US",
                f"u{u}",
                None,
                None,
                "full",
                items,
            )
            impressions.append((f"{u}-{q}", imp))
            for i, team in enumerate(teams):
                if rng.random() < ctr[team] / (1 + i) ** 0.5:
                    feedback.append(Feedback(rid, f"e{i}", "click", i, f"u{u}", 2_000 + u))
    return Log(impressions, feedback)


def test_the_report_finds_a_known_difference_and_none_between_equals():
    differs = report(experiment_requests(constructed_log({"default": 0.05, "b": 0.07}), "exp"))
    [c] = differs["comparisons"]
    assert c["control"] == "default" and c["variant"] == "b" and c["p_value"] < 0.01 and c["ci95"][0] > 0
    v = differs["variants"]
    assert v["b"]["ctr"] > v["default"]["ctr"] and v["b"]["users"] == v["default"]["users"] == 1500
    # A/A: the test is calibrated, it finds a "difference" in about 5 % of equal experiments, not more
    false_alarms = [
        p_value(experiment_requests(constructed_log({"default": 0.05, "b": 0.05}, users=600, seed=s), "exp")) < 0.05
        for s in range(1, 41)
    ]
    assert sum(false_alarms) <= 6  # P(more than 6 of 40 | 5 %) < 1 %


def test_interleaving_credits_teams_and_tests_wins():
    log = constructed_log({"default": 0.05, "b": 0.09}, users=800, interleave=True)
    requests = experiment_requests(log, "exp")
    assert requests.mode == "interleave" and set(requests.team_clicks) == {"default", "b"}
    result = report(requests)
    v, [c] = result["variants"], result["comparisons"]
    assert v["b"]["wins"] > v["default"]["wins"] and c["preference"] > 0 and c["p_value"] < 0.01
    equal = {"default": 0.05, "b": 0.05}
    logs = [constructed_log(equal, users=300, interleave=True, seed=s) for s in range(1, 41)]
    assert sum(p_value(experiment_requests(log, "exp")) < 0.05 for log in logs) <= 6  # calibrated, as A/B


def test_power_grows_with_users_and_interleaving_needs_fewer():
    ab = experiment_requests(constructed_log({"default": 0.05, "b": 0.07}, users=2000), "exp")
    il = experiment_requests(constructed_log({"default": 0.05, "b": 0.07}, users=2000, interleave=True), "exp")
    ab_power = [p["power"] for p in power(ab, [50, 400, 1600], trials=40)]
    il_power = [p["power"] for p in power(il, [50, 400, 1600], trials=40)]
    assert ab_power == sorted(ab_power) and il_power[-1] == 1.0 and il_power[1] >= ab_power[1]
    assert np.isfinite(p_value(ab)) and np.isfinite(p_value(il))
