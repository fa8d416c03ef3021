"""The ranking cache against a real Redis (or the Redis Cluster): a stored ranking is in the worker's
memory at once and in Redis behind the caller (one pipeline for the writes of one event-loop
iteration, with the TTL); a look-up that finds nothing in Redis still finds what this worker wrote
behind; writes beyond `max_pending`, and those Redis fails, are dropped and counted, never raised;
`close()` writes what waits."""

from __future__ import annotations

import asyncio
import uuid

from service.ops.metrics import CACHE_WRITES, flush
from service.store.breaker import CircuitBreaker
from service.store.cache import RankCache
from service.store.redis_client import connect


def _run(coro):
    import uvloop

    return uvloop.run(coro)


def _writes(result: str) -> float:
    flush()
    return CACHE_WRITES.labels(result=result)._value.get()


def _keys(n: int) -> list[str]:
    tag = uuid.uuid4().hex
    return [f"ur:test:cache:{tag}:{i}" for i in range(n)]


def test_stored_rankings_reach_redis_behind_the_caller_with_their_ttl(redis_url):
    keys = _keys(12)
    written = _writes("written")

    async def go():
        client = connect(redis_url, 2.0, 8)
        cache = RankCache(client, ttl_s=300, local_size=100, local_ttl_s=5.0)
        stored = [cache.store(key, f"v{i}".encode()) for i, key in enumerate(keys)]  # plain calls: nothing to await
        local = [cache.local_get(k) for k in keys]
        for _ in range(200):  # then, behind: within a few event-loop iterations
            if all(await asyncio.gather(*(client.exists(k) for k in keys))):
                break
            await asyncio.sleep(0.01)
        values = [await client.get(k) for k in keys]
        ttls = [await client.ttl(k) for k in keys]
        for k in keys:
            await client.delete(k)
        await client.aclose()
        return stored, local, values, ttls

    stored, local, values, ttls = _run(go())
    assert stored == [None] * 12
    assert local == [f"v{i}".encode() for i in range(12)]
    assert values == [f"v{i}".encode() for i in range(12)]
    assert all(0 < t <= 300 for t in ttls)
    assert _writes("written") - written == 12


def test_more_writes_at_once_than_one_script_call_takes_all_reach_redis(redis_url):
    keys = _keys(2_500)  # one batch; on one server, three script calls of at most 1,000 keys

    async def go():
        client = connect(redis_url, 2.0, 8)
        cache = RankCache(client, ttl_s=120)
        for i, key in enumerate(keys):
            cache.store(key, b"r%d" % i)
        await cache.close()
        values = [await client.get(k) for k in keys]
        ttls = {await client.ttl(k) for k in keys[::250]}
        for k in keys:
            await client.delete(k)
        await client.aclose()
        return values, ttls

    values, ttls = _run(go())
    assert values == [b"r%d" % i for i in range(2_500)]
    assert all(0 < t <= 120 for t in ttls)


def test_a_lookup_finds_what_this_worker_wrote_behind_without_a_local_layer(redis_url):
    keys = _keys(300)  # many times: Redis may answer the look-up before the write lands, and the write's
    # reply come back first (the look-up then found nothing in 13 of 2,000 tries before the last batch was kept)

    async def go():
        client = connect(redis_url, 2.0, 8)
        found = []
        for key in keys:
            cache = RankCache(client, ttl_s=60)  # no local layer
            cache.store(key, b"ranked")
            found.append(await cache.get(key))  # Redis has it only once the pipeline went
            await cache.close()
        in_redis = [await client.get(k) for k in keys]
        for k in keys:
            await client.delete(k)
        await client.aclose()
        return found, in_redis

    found, in_redis = _run(go())
    assert found == [b"ranked"] * 300 and in_redis == [b"ranked"] * 300


def test_writes_beyond_max_pending_are_dropped_and_counted(redis_url):
    keys = _keys(5)
    dropped, written = _writes("dropped"), _writes("written")

    async def go():
        client = connect(redis_url, 2.0, 8)
        cache = RankCache(client, ttl_s=60, max_pending=2)
        for key in keys:  # one iteration: the first two wait, the rest do not fit
            cache.store(key, b"x")
        cache.store(keys[0], b"newer")  # a key already waiting takes its newer value, no more room
        await cache.close()
        values = [await client.get(k) for k in keys]
        for k in keys:
            await client.delete(k)
        await client.aclose()
        return values

    assert _run(go()) == [b"newer", b"x", None, None, None]
    assert _writes("dropped") - dropped == 3
    assert _writes("written") - written == 2


def test_a_redis_that_fails_drops_the_writes_and_never_raises():
    dropped = _writes("dropped")

    async def go():
        # nothing listens on port 1: every write fails; the breaker opens after the first failure
        client = connect("redis://127.0.0.1:1/0", 0.2, 8, CircuitBreaker(1, 30.0))
        cache = RankCache(client, ttl_s=60, local_size=10, local_ttl_s=5.0)
        cache.store("ur:test:cache:down", b"x")
        await cache.close()
        again = await cache.get("ur:test:cache:down")  # the worker's own layer still answers
        await client.aclose()
        return again

    assert _run(go()) == b"x"
    assert _writes("dropped") - dropped == 1


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_local_layer_keeps_values_for_their_ttl_and_evicts_the_soonest_to_expire():
    from service.store.cache import LocalLayer

    clock = _Clock()
    layer = LocalLayer(3, ttl_s=10.0, clock=clock)
    layer["a"] = b"1"
    clock.now += 4
    layer["b"] = b"2"
    layer["c"] = b"3"
    assert (layer.get("a"), layer.get("b"), layer.get("c"), layer.get("d")) == (b"1", b"2", b"3", None)
    clock.now += 1
    layer["a"] = b"1'"  # set again: its TTL starts again, so "b" is now the soonest to expire
    layer["d"] = b"4"  # full: "b" goes
    assert (layer.get("a"), layer.get("b"), layer.get("c"), layer.get("d"), len(layer)) == (b"1'", None, b"3", b"4", 3)
    clock.now += 9  # "c" was set 10 s ago: expired; "a" and "d" 9 s ago
    assert (layer.get("c"), layer.get("a"), layer.get("d")) == (None, b"1'", b"4")
    clock.now += 1.5  # all expired; a new value clears them from the front
    layer["e"] = b"5"
    assert (len(layer), layer.get("e"), layer.get("a")) == (1, b"5", None)
