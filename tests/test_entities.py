"""POST /entities: entities added at run time rank on the next request, on every replica, through the
real service over HTTP and a real Redis."""

import time
import uuid

import pytest

from tests.helpers import LiveServer
from unirank.core.tables import FeatureTables
from unirank.loop.redis_client import redis_client

TOKEN = "test-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def stream() -> str:
    return f"ur:entities:test:{uuid.uuid4().hex[:8]}"  # this module's own runtime catalog


@pytest.fixture(scope="module")
def admin(bundle_dir, redis_url, stream):
    live = LiveServer(bundle_dir, redis_url, {"UNIRANK_ADMIN_TOKEN": TOKEN, "UNIRANK_CATALOG_STREAM": stream})
    live.wait_ready()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def tables(bundle_dir) -> FeatureTables:
    return FeatureTables.load(bundle_dir / "tables")


def add(live, entities, status=201):
    r = live.client.post("/entities", json=entities, headers=AUTH)
    assert r.status_code == status, r.text
    return r.json()


def ranked_ids(live, **body) -> list[str]:
    r = live.client.post("/rank", json=body)
    assert r.status_code == 200, r.text
    return [i["entity_id"] for i in r.json()["items"]]


def new_id() -> str:
    return f"rt-{uuid.uuid4().hex[:10]}"


def test_adding_needs_the_admin_token(admin, client):
    entity = [{"entity_id": new_id(), "title": "Token Test"}]
    assert admin.client.post("/entities", json=entity).status_code == 401
    r = admin.client.post("/entities", json=entity, headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/entities", json=entity, headers=AUTH)  # a server without a token configured
    assert r.status_code == 403 and "UNIRANK_ADMIN_TOKEN" in r.json()["detail"][0]["message"]


@pytest.mark.parametrize(
    "body, field",
    [
        ([{"entity_id": "x1", "title": "!!"}], "entities[0].title"),
        ([{"entity_id": "x1", "title": "Fine"}, {"title": "No id"}], "entities[1].entity_id"),
        ([{"entity_id": "x1", "title": "Fine", "release_year": 3000}], "entities[0].release_year"),
        ([{"entity_id": "x1", "title": "Fine", "kind": "book"}], "entities[0].kind"),
        ([{"entity_id": "x1", "title": "Fine", "countries": ["USA"]}], "entities[0].countries.0"),
        ({"entity_id": "x1", "title": "not a list"}, "entities"),
        ([], "entities"),
    ],
)
def test_bad_entities_are_a_422_naming_the_field(admin, body, field):
    r = admin.client.post("/entities", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]]


def test_entities_the_model_was_trained_with_are_a_409(admin, tables):
    r = admin.client.post("/entities", json=[{"entity_id": tables.entity_ids[5], "title": "Renamed"}], headers=AUTH)
    assert r.status_code == 409 and r.json()["entity_ids"] == [tables.entity_ids[5]]


def test_an_added_entity_ranks_immediately(admin, tables):
    eid, genre = new_id(), tables.genres[1]
    assert ranked_ids(admin, task="search", country="US", query="zorblat") == []  # cached as empty
    reply = add(
        admin,
        [
            {
                "entity_id": eid,
                "title": "Zorblat Rising",
                "genres": [genre, "no-such-genre"],
                "release_year": 2024,
                "countries": ["US", "ZZ"],
            }
        ],
    )
    assert reply["accepted"] == 1 and reply["visible"] is True
    assert reply["ignored"] == {eid: {"genres": ["no-such-genre"], "countries": ["ZZ"]}}
    # search finds it at once, typos included; the empty ranking cached before it was added is not served
    assert ranked_ids(admin, task="search", country="US", query="zorblat")[0] == eid
    assert eid in ranked_ids(admin, task="search", country="US", query="zorblta ris")
    # only where it is available
    other = next(c for c in tables.countries[1:] if c != "US")
    assert eid not in ranked_ids(admin, task="search", country=other, query="zorblat")
    # as a source of more-like-this: titles of its genre come back
    similar = ranked_ids(admin, task="more_like_this", country="US", source_entity_id=eid, k=10)
    assert similar and eid not in similar
    assert sum(genre in admin.client.get(f"/entities/{s}").json()["genres"] for s in similar) >= 5
    # scored with its own features, not as an unknown id
    r = admin.client.post(
        "/rank", json={"task": "search", "country": "US", "query": "zorblat", "candidates": [eid, "never-added"]}
    )
    scores = {i["entity_id"]: i["score"] for i in r.json()["items"]}
    assert scores[eid] > scores["never-added"]
    entity = admin.client.get(f"/entities/{eid}").json()
    assert entity["title"] == "Zorblat Rising" and entity["added_at_run_time"] is True
    runtime = admin.client.get("/model").json()["runtime_catalog"]
    assert runtime["entities"] >= 1 and runtime["generation"] == reply["catalog_generation"]
    gauge = next(
        line for line in admin.client.get("/metrics").text.splitlines() if line.startswith("unirank_runtime_entities ")
    )
    assert float(gauge.split()[1]) == runtime["entities"]


def test_events_on_an_added_entity_reach_the_next_ranking(admin, tables):
    eid, user = new_id(), tables.user_ids[11]
    add(admin, [{"entity_id": eid, "title": "Quintessa Voyage", "genres": [tables.genres[2]]}])
    events = [{"user_id": user, "task": "search", "entity_id": eid, "action": "click", "query": "quint"}]
    assert admin.client.post("/events", json=events).status_code == 202
    r = admin.client.post(
        "/rank", json={"task": "prequery", "country": "US", "user_id": user, "k": 10, "explain": True}
    )
    assert r.status_code == 200 and r.json()["context"]["personalization"] == "full"


def test_replacing_an_added_entity_moves_its_title(admin):
    eid = new_id()
    add(admin, [{"entity_id": eid, "title": "Vextrahn Dawn"}])
    assert ranked_ids(admin, task="search", country="US", query="vextrahn") == [eid]
    add(admin, [{"entity_id": eid, "title": "Ilmorq Dusk"}])
    assert ranked_ids(admin, task="search", country="US", query="vextrahn") == []
    assert ranked_ids(admin, task="search", country="US", query="ilmorq") == [eid]


def test_search_finds_an_added_entity_by_its_tags_and_genres_and_forgets_replaced_tags(admin, tables):
    eid = new_id()
    genre = tables.genres[1]
    add(admin, [{"entity_id": eid, "title": "Quelmor Vast", "genres": [genre], "tags": ["Brokkenvale Saga"]}])
    assert ranked_ids(admin, task="search", country="US", query="brokkenv", k=200) == [eid]  # a tag's prefix
    assert eid in ranked_ids(admin, task="search", country="US", query="brokkenvale saga", k=200)
    r = admin.client.post("/rank", json={"task": "search", "country": "US", "query": genre, "k": 200})
    found = [i["entity_id"] for i in r.json()["items"]]
    # a genre name finds titles of the genre besides the titles that contain the word
    genre_titles = {tables.entity_ids[e] for e in range(1, tables.n_entities + 1) if tables.genre_hot[e, 1]}
    assert eid in found and len(genre_titles & set(found)) >= min(20, len(genre_titles))
    add(admin, [{"entity_id": eid, "title": "Quelmor Vast", "tags": ["Trindlefen"]}])
    assert ranked_ids(admin, task="search", country="US", query="brokkenv") == []
    assert ranked_ids(admin, task="search", country="US", query="trindlefen") == [eid]
    got = admin.client.get(f"/entities/{eid}", headers=AUTH)
    assert got.status_code == 200 and got.json()["tags"] == ["Trindlefen"], got.text


def test_replicas_follow_the_runtime_catalog(admin, bundle_dir, redis_url, stream):
    early = new_id()
    add(admin, [{"entity_id": early, "title": "Praxholm Early"}])
    replica = LiveServer(bundle_dir, redis_url, {"UNIRANK_CATALOG_STREAM": stream})
    try:
        replica.wait_ready()  # started after the add: replays it before it is ready
        assert ranked_ids(replica, task="search", country="US", query="praxholm") == [early]
        late = new_id()
        add(admin, [{"entity_id": late, "title": "Praxholm Late"}])  # while it runs: it follows
        deadline = time.monotonic() + 5
        while late not in (found := ranked_ids(replica, task="search", country="US", query="praxholm")):
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        assert set(found) == {early, late}
    finally:
        replica.stop()


def test_a_malformed_log_entry_is_skipped_not_fatal(admin, redis_url, stream):
    """An entry the follower cannot read (written by hand, say) is counted and skipped; later ones still apply."""
    redis_client(redis_url).xadd(stream, {"entities": b"not json"})
    eid = new_id()
    add(admin, [{"entity_id": eid, "title": "Wuxtrel After"}])
    assert ranked_ids(admin, task="search", country="US", query="wuxtrel") == [eid]
    assert 'unirank_errors_total{type="catalog_bad_entry"}' in admin.client.get("/metrics").text


def test_an_id_twice_in_a_batch_is_the_last_one(admin):
    eid = new_id()
    reply = add(admin, [{"entity_id": eid, "title": "First Title"}, {"entity_id": eid, "title": "Second Title"}])
    assert reply["accepted"] == 1
    assert admin.client.get(f"/entities/{eid}").json()["title"] == "Second Title"


def test_an_id_with_a_slash_is_found_by_its_path(admin):
    from urllib.parse import quote

    eid = f"shows/{new_id()}"  # ids may hold any printable character; "/" reaches the path as %2F
    add(admin, [{"entity_id": eid, "title": "Slashed Title"}])
    r = admin.client.get(f"/entities/{quote(eid, safe='')}")
    assert r.status_code == 200, r.text
    assert r.json()["entity_id"] == eid and r.json()["title"] == "Slashed Title"
    assert admin.client.get(f"/entities/{quote('shows/nope', safe='')}").status_code == 404


def test_the_log_is_compacted_into_a_snapshot_that_replicas_and_exports_read(bundle_dir, redis_url):
    """Compaction folds the log into its snapshot and trims it; a replica that starts afterwards, a worker
    that was following, and `unirank logs export` all still hold every entity's latest record."""
    import asyncio

    from service.model.catalog import CatalogSync
    from service.store.redis_client import connect
    from unirank.loop.logs import entities_table

    own = f"ur:entities:compact:{uuid.uuid4().hex[:8]}"
    env = {"UNIRANK_ADMIN_TOKEN": TOKEN, "UNIRANK_CATALOG_STREAM": own}
    writer = LiveServer(bundle_dir, redis_url, env)
    replica = None
    try:
        writer.wait_ready()
        first, second, third, late = new_id(), new_id(), new_id(), new_id()
        add(writer, [{"entity_id": first, "title": "Quorvane Before"}])
        add(
            writer, [{"entity_id": second, "title": "Quorvane Second"}, {"entity_id": third, "title": "Quorvane Third"}]
        )
        add(writer, [{"entity_id": first, "title": "Zeltrick After"}])  # replaces the first one's record

        async def compact() -> int:
            client = connect(redis_url, 2.0, 4)
            try:  # compaction touches only the log: no catalog needed to fold it
                return await CatalogSync(client, None, own, compact_entries=2, compact_after_s=0).compact()
            finally:
                await client.aclose()

        assert asyncio.run(compact()) == 3
        store = redis_client(redis_url)
        assert store.xlen(own) == 0 and store.exists(f"{own}:snapshot")
        add(writer, [{"entity_id": late, "title": "Quorvane Late"}])
        replica = LiveServer(bundle_dir, redis_url, {"UNIRANK_CATALOG_STREAM": own})
        replica.wait_ready()  # replays the snapshot, then the entry after it
        for live in (writer, replica):
            assert set(ranked_ids(live, task="search", country="US", query="quorvane")) == {second, third, late}
            assert ranked_ids(live, task="search", country="US", query="zeltrick") == [first]
        exported = {r["entity_id"]: r["title"] for r in entities_table(bundle_dir, store, own).to_pylist()}
        assert {e: exported[e] for e in (first, second, late)} == {
            first: "Zeltrick After",
            second: "Quorvane Second",
            late: "Quorvane Late",
        }
    finally:
        writer.stop()
        if replica is not None:
            replica.stop()
