"""Auto-pipelining against a real Redis (or the Redis Cluster): concurrent commands go together and each
gets its own reply or error; a lone command goes alone; a failed pipeline fails each of its commands; a
caller that gives up loses nothing for the others. (A single server's reads go through
`service.store.fast_reads` in the service: off here, so that they exercise the pipelines.)"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError, ResponseError

from service.store.breaker import CircuitBreaker
from service.store.redis_client import connect, is_cluster


def _run(coro):
    import uvloop

    return uvloop.run(coro)


def test_concurrent_commands_share_pipelines_and_get_their_own_replies(redis_url):
    async def go():
        client = connect(redis_url, 2.0, 8, auto_pipeline=True, fast_reads=False)
        tag = uuid.uuid4().hex
        keys = [f"ur:test:ap:{tag}:{i}" for i in range(40)]
        await asyncio.gather(*(client.rpush(k, *[f"{k}|{j}" for j in range(i % 5 + 1)]) for i, k in enumerate(keys)))
        pipelines_before = client.auto.pipelines
        got = await asyncio.gather(*(client.lrange(k, 0, -1) for k in keys))
        sent = client.auto.pipelines - pipelines_before
        await asyncio.gather(*(client.delete(k) for k in keys))  # one key a command: fine on a cluster too
        await client.aclose()
        return keys, got, sent

    keys, got, sent = _run(go())
    for i, (key, items) in enumerate(zip(keys, got, strict=True)):
        assert items == [f"{key}|{j}".encode() for j in range(i % 5 + 1)]
    assert 1 <= sent < len(keys)  # they went together


def test_a_lone_command_goes_alone_and_errors_stay_with_their_command(redis_url):
    async def go():
        client = connect(redis_url, 2.0, 8, auto_pipeline=True, fast_reads=False)
        tag = uuid.uuid4().hex
        string, missing = f"ur:test:ap:{tag}:s", f"ur:test:ap:{tag}:none"
        await client.set(string, b"v", ex=60)
        before = client.auto.pipelines
        alone = await client.get(string)
        lone_pipelines = client.auto.pipelines - before
        # LRANGE on a string is WRONGTYPE: that command fails, its neighbours in the pipeline do not
        results = await asyncio.gather(
            client.get(string), client.lrange(string, 0, 1), client.get(missing), return_exceptions=True
        )
        await client.aclose()
        return alone, lone_pipelines, results

    alone, lone_pipelines, (value, wrong, nothing) = _run(go())
    assert alone == b"v" and lone_pipelines == 1
    assert value == b"v" and isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong) and nothing is None


def test_a_failed_pipeline_fails_each_of_its_commands():
    async def go():
        # nothing listens on this port: every command fails to connect, and each caller sees that
        client = connect("redis://127.0.0.1:1/0", 0.2, 8, CircuitBreaker(failures=100), auto_pipeline=True)
        results = await asyncio.gather(*(client.get(f"k{i}") for i in range(6)), return_exceptions=True)
        await client.aclose()
        return results

    results = _run(go())
    assert len(results) == 6 and all(isinstance(r, ConnectionError | OSError) for r in results)


def test_a_caller_that_gives_up_loses_nothing_for_the_others(redis_url):
    async def go():
        client = connect(redis_url, 2.0, 8, auto_pipeline=True, fast_reads=False)
        key = f"ur:test:ap:{uuid.uuid4().hex}"
        await client.set(key, b"x", ex=60)
        first = asyncio.ensure_future(client.get(key))
        others = [asyncio.ensure_future(client.get(key)) for _ in range(5)]
        await asyncio.sleep(0)  # all six are waiting for this iteration's pipeline
        first.cancel()
        got = await asyncio.gather(*others)
        with pytest.raises(asyncio.CancelledError):
            await first
        again = await client.get(key)  # the client still works
        await client.aclose()
        return got, again

    got, again = _run(go())
    assert got == [b"x"] * 5 and again == b"x"


def test_concurrent_gets_go_as_one_mget_beside_the_other_commands(redis_url):
    async def go():
        client = connect(redis_url, 2.0, 8, auto_pipeline=True, fast_reads=False)
        tag = uuid.uuid4().hex
        keys = [f"ur:test:ap:{{{tag}}}:{i}" for i in range(6)]
        listed = f"ur:test:ap:{{{tag}}}:list"
        for i, k in enumerate(keys[:4]):
            await client.set(k, f"v{i}")
        await client.rpush(listed, "a", "b")
        single = not is_cluster(client)
        mgets = (await client.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0) if single else 0
        before = client.auto.pipelines
        got = await asyncio.gather(
            *(client.get(k) for k in keys),  # four present, two missing
            client.lrange(listed, 0, -1),
            client.execute_command("INCR", listed),  # WRONGTYPE: its own error
            return_exceptions=True,
        )
        sent = client.auto.pipelines - before
        only_gets = await asyncio.gather(*(client.get(k) for k in reversed(keys)))
        if single:  # one MGET beside the others, one alone (a cluster keeps GETs: its keys span slots)
            assert (await client.info("commandstats"))["cmdstat_mget"]["calls"] - mgets == 2
        await asyncio.gather(*(client.delete(k) for k in [*keys, listed]))
        await client.aclose()
        return got, sent, only_gets

    got, sent, only_gets = _run(go())
    assert got[:6] == [b"v0", b"v1", b"v2", b"v3", None, None]
    assert got[6] == [b"a", b"b"]
    assert isinstance(got[7], ResponseError) and "WRONGTYPE" in str(got[7])
    assert sent == 1
    assert only_gets == [None, None, b"v3", b"v2", b"v1", b"v0"]
