"""The real service over HTTP, against a real Redis, with a real bundle."""

import re
import shutil
import threading
import uuid

import pytest

from loadtest.processes import free_port
from tests.helpers import LiveServer
from unirank.core.history import counters_key, history_key
from unirank.core.tables import FeatureTables
from unirank.core.text import normalize
from unirank.loop.redis_client import redis_client


@pytest.fixture(scope="module")
def tables(bundle_dir) -> FeatureTables:
    return FeatureTables.load(bundle_dir / "tables")


def rank(client, **body):
    r = client.post("/rank", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def check_items(items, k):
    ids = [i["entity_id"] for i in items]
    scores = [i["score"] for i in items]
    assert 0 < len(items) <= k
    assert len(set(ids)) == len(ids)
    assert all(a >= b for a, b in zip(scores, scores[1:], strict=False))


@pytest.mark.parametrize("personalization", ["none", "cluster", "full"])
def test_every_task_ranks(client, tables, personalization):
    user = tables.user_ids[5]
    source = tables.entity_ids[3]
    for body in (
        {"task": "search", "query": "th"},
        {"task": "prequery"},
        {"task": "more_like_this", "source_entity_id": source},
    ):
        out = rank(client, country="US", user_id=user, k=10, personalization=personalization, explain=True, **body)
        check_items(out["items"], 10)
        assert out["task"] == body["task"] and out["model_version"]
        assert out["context"]["personalization"] == personalization
        if body["task"] == "more_like_this":
            assert source not in [i["entity_id"] for i in out["items"]]
            assert out["context"]["query_imputed"] and out["context"]["query"] == normalize(tables.title_of(source))


def test_ranking_changes_with_the_query(client):
    a = rank(client, task="search", country="US", query="the", k=10)["items"]
    b = rank(client, task="search", country="US", query="star", k=10)["items"]
    assert [i["entity_id"] for i in a] != [i["entity_id"] for i in b]


def _multiword_title(tables, country="US"):
    c = tables.country_index[country]
    for idx, title in enumerate(tables.norm_titles):
        if idx and len(title.split()) >= 2 and len(title) >= 8 and tables.avail[idx, c]:
            return tables.entity_ids[idx], title
    raise AssertionError("no multi-word title")


def test_search_prefix_finds_the_title_it_starts(client, tables):
    entity, title = _multiword_title(tables)
    prefix = title[: len(title.split()[0]) + 3]  # first word and three letters of the next
    found = [i["entity_id"] for i in rank(client, task="search", country="US", query=prefix.upper(), k=50)["items"]]
    assert entity in found
    typo = title[:2] + ("x" if title[2] != "x" else "y") + title[3:]
    found = [i["entity_id"] for i in rank(client, task="search", country="US", query=typo, k=50)["items"]]
    assert entity in found


def test_repeated_keystrokes_hit_the_cache(client):
    k = 8 + uuid.uuid4().int % 400  # a cache key no other test uses
    body = {
        "task": "search",
        "country": "GB",
        "query": "Th",
        "k": k,
        "personalization": "cluster",
        "user_id": "u-cache",
    }
    first = client.post("/rank", json=body).json()
    second = client.post("/rank", json=body | {"query": "th "}).json()  # normalises to the same keystroke
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert second["items"] == first["items"]
    # With full personalization the cluster-level candidates are cached (stage one) and re-scored.
    full = body | {"personalization": "full", "query": "ro"}
    client.post("/rank", json=full)
    assert client.post("/rank", json=full).json()["cache"] == "hit"
    assert client.post("/rank", json=full | {"candidates": ["e000001"]}).json()["cache"] == "bypass"


def test_replicas_share_rankings_through_redis(client, bundle_dir, redis_url):
    """A second replica on the same Redis serves the first one's ranking from Redis (not its memory)."""
    body = {
        "task": "search",
        "country": "FR",
        "query": "ca",
        "k": 3 + uuid.uuid4().int % 400,
        "personalization": "cluster",
    }
    first = client.post("/rank", json=body).json()
    replica = LiveServer(bundle_dir, redis_url)
    try:
        replica.wait_ready()
        before = _metric(replica.client, "unirank_cache_layer_hits_total", {"layer": "redis"})
        shared = replica.client.post("/rank", json=body).json()
        assert (first["cache"], shared["cache"]) == ("miss", "hit") and shared["items"] == first["items"]
        assert _metric(replica.client, "unirank_cache_layer_hits_total", {"layer": "redis"}) == before + 1
        # ... and keeps it in its own memory for the next keystroke.
        replica.client.post("/rank", json=body)
        assert _metric(replica.client, "unirank_cache_layer_hits_total", {"layer": "local"}) >= 1
    finally:
        replica.stop()


def _metric(client, name, labels):
    text = client.get("/metrics").text
    pattern = re.escape(name) + r"\{" + ",".join(f'{k}="{re.escape(v)}"' for k, v in labels.items()) + r"\} ([0-9.e+]+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


def test_concurrent_identical_misses_are_computed_once(client, server):
    body = {"task": "search", "country": "DE", "query": "s", "k": 3 + uuid.uuid4().int % 400, "personalization": "none"}
    before = _metric(client, "unirank_candidates_count", {"task": "search"})
    results = []

    def call():
        import httpx

        with httpx.Client(base_url=server.url) as c:
            results.append(c.post("/rank", json=body).json())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r["items"] == results[0]["items"] for r in results)
    assert _metric(client, "unirank_candidates_count", {"task": "search"}) - before == 1


def test_events_change_the_next_ranking_for_that_user(client, tables):
    user = f"u-live-{uuid.uuid4().hex[:8]}"
    body = {"task": "prequery", "country": "US", "user_id": user, "k": 30, "personalization": "full"}
    before = rank(client, **body)["items"]
    # The user clicks a few titles of one corner of the catalogue.
    factors = tables.item_factors
    seed = int(factors[1:].sum(1).argmax()) + 1
    similar = (factors @ factors[seed]).argsort()[::-1][:5]
    events = [
        {"user_id": user, "task": "search", "entity_id": tables.entity_ids[i], "action": "click", "ts": 1e9 + n}
        for n, i in enumerate(similar)
        if i
    ]
    r = client.post("/events", json=events)
    assert r.status_code == 202 and r.json() == {"accepted": len(events)}
    after = rank(client, **body)["items"]
    assert [(i["entity_id"], i["score"]) for i in after] != [(i["entity_id"], i["score"]) for i in before]
    # Users of a cluster share cached results; the cluster level ignores the live history.
    assert (
        rank(client, **body | {"personalization": "none"})["items"]
        == rank(client, **body | {"personalization": "none"})["items"]
    )


def test_events_land_in_redis_newest_first_and_capped(client, redis_url):
    user = f"u-store-{uuid.uuid4().hex[:8]}"
    clicks = [
        {"user_id": user, "task": "search", "entity_id": f"e{n:06d}", "action": "click", "ts": 1e9 + n}
        for n in range(60)
    ]
    batch = clicks[::-1] + [{"user_id": user, "task": "prequery", "entity_id": "e000001", "action": "impression"}]
    assert client.post("/events", json=batch).json() == {"accepted": 61}
    r = redis_client(redis_url)
    history = [x.decode() for x in r.lrange(history_key(user), 0, -1)]
    assert history == [
        f"e{n:06d}|1" for n in range(59, 9, -1)
    ]  # the 50 most recent clicks (kind 1: search click), newest first
    counters = {k.decode(): int(v) for k, v in r.hgetall(counters_key(user)).items()}
    assert counters == {"click": 60, "search:click": 60, "impression": 1, "prequery:impression": 1}
    assert r.ttl(history_key(user)) > 0 and r.ttl(counters_key(user)) > 0


def test_events_accept_impressions_and_plays(client):
    events = [
        {"user_id": "u-e", "task": "prequery", "entity_id": "e000002", "action": a}
        for a in ("impression", "click", "play")
    ]
    assert client.post("/events", json=events).status_code == 202


def test_unknown_ids_are_not_errors(client):
    out = rank(client, task="prequery", country="ZZ", user_id="never-seen", k=5, explain=True)
    check_items(out["items"], 5)
    assert out["context"]["country_known"] is False and out["context"]["user_cluster"] == 0
    out = rank(client, task="prequery", country="US", candidates=["no-such-entity", "e000001", "e000001"], k=5)
    assert sorted(i["entity_id"] for i in out["items"]) == ["e000001", "no-such-entity"]
    out = rank(client, task="more_like_this", country="US", source_entity_id="no-such-entity", k=5)
    check_items(out["items"], 5)


def test_more_like_this_drops_the_source_from_explicit_candidates(client):
    out = rank(
        client, task="more_like_this", country="US", source_entity_id="e000001", candidates=["e000001", "e000002"]
    )
    assert [i["entity_id"] for i in out["items"]] == ["e000002"]


def test_ties_break_deterministically(client):
    out = rank(client, task="prequery", country="US", candidates=["zz-new", "aa-new", "mm-new"], k=3)
    assert [i["entity_id"] for i in out["items"]] == ["aa-new", "mm-new", "zz-new"]


BAD_RANK = [
    ({"task": "search", "country": "US"}, "query"),
    ({"task": "more_like_this", "country": "US"}, "source_entity_id"),
    ({"task": "browse", "country": "US"}, "task"),
    ({"task": "prequery", "country": "US", "k": 0}, "k"),
    ({"task": "prequery", "country": "US", "k": 501}, "k"),
    ({"task": "prequery", "country": "US", "k": "ten"}, "k"),
    ({"task": "prequery", "country": "US", "candidates": [f"e{i}" for i in range(1001)]}, "candidates"),
    ({"task": "search", "country": "US", "query": "x" * 201}, "query"),
    ({"task": "prequery", "country": "USA"}, "country"),
    ({"task": "prequery"}, "country"),
    ({"task": "prequery", "country": "US", "user_id": 42}, "user_id"),
    ({"task": "prequery", "country": "US", "candidates": "e000001"}, "candidates"),
    ({"task": "prequery", "country": "US", "personalization": "max"}, "personalization"),
    ({"task": "prequery", "country": "US", "explain": "please"}, "explain"),
]


@pytest.mark.parametrize(("body", "field"), BAD_RANK)
def test_bad_rank_input_is_a_422_naming_the_field(client, body, field):
    r = client.post("/rank", json=body)
    assert r.status_code == 422, r.text
    assert field in [d["field"].split(".")[0] for d in r.json()["detail"]]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"null"])
def test_malformed_json_is_a_422(client, raw):
    r = client.post("/rank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"]


BAD_EVENTS = [
    ([{"user_id": "u", "task": "search", "entity_id": "e1", "action": "like"}], "events[0].action"),
    ([{"task": "search", "entity_id": "e1", "action": "click"}], "events[0].user_id"),
    ([{"user_id": "u", "task": "search", "action": "click"}], "events[0].entity_id"),
    ([{"user_id": "u", "task": "search", "entity_id": "e1", "action": "click"}] * 1001, "events"),
    ([], "events"),
    ({"user_id": "u"}, "events"),
]


@pytest.mark.parametrize(("body", "field"), BAD_EVENTS)
def test_bad_events_are_a_422_naming_the_event(client, body, field):
    r = client.post("/events", json=body)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]]


def test_personalization_above_the_bundle_level_is_a_422(bundle_dir, redis_url, tmp_path):
    # The session bundle is 'full'; make a copy that claims 'cluster' to check the bound.
    import json

    copy = tmp_path / "cluster-bundle"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["personalization"] = "cluster"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    live = LiveServer(copy, redis_url)
    try:
        live.wait_ready()
        r = live.client.post("/rank", json={"task": "prequery", "country": "US", "personalization": "full"})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "personalization"
    finally:
        live.stop()


def test_server_timing_and_metrics(client):
    r = client.post("/rank", json={"task": "search", "country": "US", "query": "mo", "k": 5})
    stages = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    assert {"context", "total"} <= set(stages) and float(stages["total"]) > 0
    text = client.get("/metrics").text
    assert (
        'unirank_request_duration_seconds_bucket{endpoint="/rank",le="0.00025",model="default",task="search"}' in text
    )
    assert 'unirank_stage_duration_seconds_bucket{le="1.0",stage="inference"}' in text
    assert re.search(r'unirank_cache_total\{model="default",result="hit"\} [1-9]', text)
    assert "unirank_candidates_bucket" in text and "unirank_model_info{" in text


def test_entities_model_and_health(client, tables):
    e = client.get(f"/entities/{tables.entity_ids[1]}").json()
    assert e["title"] == tables.titles[1] and e["genres"] and e["countries"]
    assert client.get("/entities/nope").status_code == 404
    m = client.get("/model").json()
    assert m["execution_provider"] == "CPUExecutionProvider" and m["personalization"] == "full"
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["redis"] == "ok"


def test_readyz_is_503_until_the_bundle_is_loaded(bundle_dir, redis_url, tmp_path):
    target = tmp_path / "late-bundle"
    live = LiveServer(target, redis_url)
    try:
        r = live.client.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert live.client.post("/rank", json={"task": "prequery", "country": "US"}).status_code == 503
        shutil.copytree(bundle_dir, target)  # e.g. an init container finishing its download
        live.wait_ready()
        assert live.client.post("/rank", json={"task": "prequery", "country": "US"}).status_code == 200
    finally:
        live.stop()


def test_redis_down_events_are_refused_and_ranking_survives(bundle_dir):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    live = LiveServer(bundle_dir, dead)
    try:
        live.wait_ready()
        assert live.client.get("/readyz").json()["redis"].startswith("error")
        r = live.client.post("/events", json=[{"user_id": "u", "task": "search", "entity_id": "e1", "action": "click"}])
        assert r.status_code == 503 and r.headers["retry-after"]
        out = live.client.post("/rank", json={"task": "search", "country": "US", "query": "th", "user_id": "u"})
        assert out.status_code == 200 and out.json()["items"]
    finally:
        live.stop()


def test_personalization_weight_moves_a_search_between_its_cluster_and_its_user(client, tables):
    user = tables.user_ids[1]
    candidates = list(tables.entity_ids[1:41])
    body = {"task": "search", "country": "US", "user_id": user, "query": "the", "candidates": candidates, "k": 40}
    full = {i["entity_id"]: i["score"] for i in rank(client, **body)["items"]}
    cluster = rank(client, **body | {"personalization": "cluster"})["items"]
    assert rank(client, **body | {"personalization_weight": 1.0})["items"] == rank(client, **body)["items"]
    at_zero = rank(client, **body | {"personalization_weight": 0.0})["items"]
    assert [i["entity_id"] for i in at_zero] == [i["entity_id"] for i in cluster]
    assert [i["score"] for i in at_zero] == pytest.approx([i["score"] for i in cluster], abs=1e-5)
    cluster = {i["entity_id"]: i["score"] for i in cluster}
    assert full != cluster  # a known user: personalization changes the scores
    half = {i["entity_id"]: i["score"] for i in rank(client, **body | {"personalization_weight": 0.5})["items"]}
    for entity, score in half.items():
        low, high = sorted((full[entity], cluster[entity]))
        assert low - 1e-6 <= score <= high + 1e-6
    r = client.post("/rank", json=body | {"personalization": "none", "personalization_weight": 0.5})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "personalization_weight"
    r = client.post("/rank", json=body | {"personalization_weight": 1.5})
    assert r.status_code == 422 and "personalization_weight" in r.text
