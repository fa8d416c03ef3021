"""Redis Cluster: the keys a call needs share a slot, and the state a batch of events leaves is the same on
a real three-master cluster as on one Redis (histories, counters, their expiry, the feedback stream, the
experiment credits). The service's own Redis-touching tests run against a cluster in `make test` too
(UNIRANK_TEST_REDIS=cluster, tests/conftest.py). Also: `unirank redis migrate-keys` moves the key names
of the versions before hash tags."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.crc import key_slot
from typer.testing import CliRunner

from loadtest.processes import RedisClusterServer, RedisServer
from service.core.schemas import Event
from service.store.events import EventStore
from service.store.redis_client import connect, is_cluster
from tests.conftest import redis_cluster_binaries
from unirank.cli import app
from unirank.core.history import HISTORY_LENGTH, counters_key, history_key
from unirank.core.impression_log import Feedback, request_key
from unirank.loop.redis_client import redis_client


@pytest.fixture(scope="module")
def servers():
    redis_cluster_binaries()
    single, cluster = RedisServer(), RedisClusterServer()
    yield {"single": single.url, "cluster": cluster.url}
    single.stop()
    cluster.stop()


@pytest.mark.parametrize("user", ["u1", "ünï", "a}b", "{x}", "{", "}{", "x{}y", "{}", "a:b/c"])
def test_a_users_history_and_counters_share_a_slot(user):
    assert key_slot(history_key(user).encode()) == key_slot(counters_key(user).encode())


def test_users_spread_over_the_slots():
    slots = {key_slot(history_key(f"user-{n}").encode()) for n in range(3000)}
    assert len(slots) > 2500  # one hot slot per user, not one for all


def _batch(rng: random.Random) -> list[Event]:
    events = []
    for n in range(400):
        action = rng.choice(["impression", "click", "click", "play"])
        named = action != "impression" and rng.random() < 0.5
        events.append(
            Event(
                user_id=f"user-{0 if n % 5 == 0 else rng.randrange(60)}",  # user-0: beyond the history's cap
                task=rng.choice(["search", "prequery", "more_like_this"]),
                entity_id=f"e{rng.randrange(200):04d}",
                action=action,
                ts=1.7e9 + n,
                request_id=f"r{rng.randrange(40)}" if named else None,
                position=rng.randrange(10) if named else None,
            )
        )
    return events


def _state(url: str, users: set[str], stream: str) -> dict:
    client = redis_client(url)
    out = {
        "histories": {u: client.lrange(history_key(u), 0, -1) for u in users},
        "counters": {u: client.hgetall(counters_key(u)) for u in users},
        "expiring": all(
            client.ttl(k) > 0 for u in users for k in (history_key(u), counters_key(u)) if client.exists(k)
        ),
        "feedback": sorted(
            (Feedback.decode(f[b"f"]).rid, Feedback.decode(f[b"f"]).entity) for _, f in client.xrange(stream)
        ),
    }
    client.close()
    return out


def test_a_batch_leaves_the_same_state_on_a_cluster_as_on_one_redis(servers):
    events = _batch(random.Random(7))
    users = {e.user_id for e in events}
    stream = f"ur:feedback:test-{random.randrange(1 << 30)}"

    async def store(url: str):
        client = connect(url, timeout_s=5.0, max_connections=8)
        assert is_cluster(client) == url.startswith("redis+cluster://")
        for rid in ("r1", "r2", "r3"):  # requests that were in an experiment (the impression log writes these)
            await client.hset(request_key(rid), mapping={"_x": "exp", "_v": "b", "e0001": "a"})
        try:
            stored, credits = await EventStore(client, 3600, stream).store(events)
        finally:
            await client.aclose()
        return stored, [(ev.request_id, ev.entity_id, x, v) for ev, x, v in credits]

    results = {kind: asyncio.run(store(url)) for kind, url in servers.items()}
    assert results["single"] == results["cluster"]
    stored, credits = results["cluster"]
    assert stored == len(events)
    assert any(x == "exp" for _, _, x, _ in credits) and any(x is None for _, _, x, _ in credits)
    assert all(v == "a" for rid, e, x, v in credits if e == "e0001" and x)  # an interleaving team wins
    states = {kind: _state(url, users, stream) for kind, url in servers.items()}
    assert states["single"] == states["cluster"]
    state = states["cluster"]
    assert state["expiring"]
    assert max(len(h) for h in state["histories"].values()) == HISTORY_LENGTH  # capped
    assert sum(int(c.get(b"click", 0)) for c in state["counters"].values()) == sum(e.action == "click" for e in events)
    assert len(state["feedback"]) == sum(e.request_id is not None for e in events)


def test_migrate_keys_moves_the_old_names_and_merges_with_the_new(servers):
    url = servers["single"]
    client = redis_client(url)
    client.rpush("ur:hist:old-only", "e1|1", "e2|3")
    client.expire("ur:hist:old-only", 1000)
    client.hset("ur:cnt:old-only", mapping={"click": 2, "search:click": 2})
    client.rpush("ur:hist:both", *[f"o{n}|1" for n in range(HISTORY_LENGTH)])
    client.expire("ur:hist:both", 5000)
    client.rpush(history_key("both"), "n1|2")  # written by the upgraded service since
    client.expire(history_key("both"), 2000)
    client.hset("ur:cnt:both", "click", 5)
    client.hset(counters_key("both"), "click", 1)
    runner = CliRunner()
    first = runner.invoke(app, ["redis", "migrate-keys", "--redis", url])
    assert first.exit_code == 0, first.output
    assert "moved 2 histories and 2 counter hashes" in first.output
    assert client.lrange(history_key("old-only"), 0, -1) == [b"e1|1", b"e2|3"]
    assert 990 < client.ttl(history_key("old-only")) <= 1000
    assert client.hgetall(counters_key("old-only")) == {b"click": b"2", b"search:click": b"2"}
    both = client.lrange(history_key("both"), 0, -1)
    assert both[0] == b"n1|2" and both[1] == b"o0|1" and len(both) == HISTORY_LENGTH  # new first, capped
    assert client.ttl(history_key("both")) > 2000  # the later expiry
    assert client.hget(counters_key("both"), "click") == b"6"
    assert not client.exists("ur:hist:old-only", "ur:cnt:old-only", "ur:hist:both", "ur:cnt:both")
    again = runner.invoke(app, ["redis", "migrate-keys", "--redis", url])
    assert "moved 0 histories and 0 counter hashes" in again.output
    refused = runner.invoke(app, ["redis", "migrate-keys", "--redis", servers["cluster"]])
    assert refused.exit_code == 1
    client.close()
