"""The request path's reads on their own connection (`service.store.fast_reads`), against real
redis-servers: the replies redis-py gives, one write for the commands of one iteration, an error reply
kept by its command, AUTH and SELECT from the URL, a unix socket, a hung Redis given up after the timeout, a dropped
connection failing its waiting commands and replaced by the next one, a caller that gives up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid

import pytest
import redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from loadtest.processes import RedisServer
from service.store.breaker import BreakerOpen, CircuitBreaker
from service.store.fast_reads import FastReads
from service.store.redis_client import connect
from service.store.redis_server import EmbeddedRedis


def _run(coro):
    import uvloop

    return uvloop.run(coro)


def _reads(url: str, timeout_s: float) -> FastReads:
    reads = FastReads.for_url(url, timeout_s)
    if reads is None:
        pytest.skip(f"no fast reads for {url.split(':')[0]}:// (REDIS_URL)")
    return reads


def test_the_replies_are_redis_pys_and_one_iterations_commands_go_in_one_write(redis_url):
    tag = uuid.uuid4().hex
    plain = redis.Redis.from_url(redis_url)
    strings = [f"ur:test:fr:{tag}:s{i}" for i in range(3)]
    listed, empty = f"ur:test:fr:{tag}:list", f"ur:test:fr:{tag}:none"
    for i, key in enumerate(strings):
        plain.set(key, f"v{i}".encode(), ex=60)
    plain.rpush(listed, *[f"e{j}|1" for j in range(25)])
    plain.expire(listed, 60)
    commands = [
        *(("GET", key) for key in strings),
        ("GET", empty),
        ("MGET", *strings, empty),
        ("LRANGE", listed, 0, 19),
        ("LRANGE", listed, -3, -1),
        ("LRANGE", empty, 0, 19),
    ]
    want = [plain.execute_command(*c) for c in commands]

    async def go():
        reads = _reads(redis_url, 1.0)
        first = await reads.execute("GET", strings[0])  # opens the connection
        writes = reads.writes
        got = await asyncio.gather(*(reads.execute(*c) for c in commands))
        writes = reads.writes - writes
        await reads.aclose()
        return first, got, writes

    first, got, writes = _run(go())
    assert first == b"v0" and got == want
    assert want[3] is None and want[5] == [f"e{j}|1".encode() for j in range(20)] and want[7] == []
    assert writes == 1


def test_an_error_reply_stays_with_its_command(redis_url):
    key = f"ur:test:fr:{uuid.uuid4().hex}"
    redis.Redis.from_url(redis_url).set(key, b"x", ex=60)

    async def go():
        reads = _reads(redis_url, 1.0)
        got = await asyncio.gather(
            reads.execute("GET", key),
            reads.execute("LRANGE", key, 0, 1),
            reads.execute("GET", key),
            return_exceptions=True,
        )
        await reads.aclose()
        return got

    value, wrong, again = _run(go())
    assert value == again == b"x"
    assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)


def test_auth_and_select_come_from_the_url():
    own = RedisServer()
    try:
        port = own.url.rsplit(":", 1)[1].split("/")[0]
        redis.Redis(port=int(port)).config_set("requirepass", "s3cret")
        redis.Redis(port=int(port), password="s3cret", db=3).set("k", b"in db 3")

        async def go(url):
            reads = FastReads.for_url(url, 1.0)
            try:
                return await reads.execute("GET", "k")
            finally:
                await reads.aclose()

        assert _run(go(f"redis://:s3cret@127.0.0.1:{port}/3")) == b"in db 3"
        assert _run(go(f"redis://:s3cret@127.0.0.1:{port}/0")) is None
        with pytest.raises(ConnectionError, match="AUTH"):
            _run(go(f"redis://:wrong@127.0.0.1:{port}/3"))
    finally:
        own.stop()


def test_a_unix_socket_url_is_served():
    """`make serve`'s embedded Redis listens on a unix socket (`unix://path`, db from the query)."""
    own = EmbeddedRedis()
    try:
        redis.Redis.from_url(own.url + "?db=2").set("k", b"over the socket")

        async def go():
            reads = FastReads.for_url(own.url + "?db=2", 1.0)
            try:
                return await asyncio.gather(reads.execute("GET", "k"), reads.execute("LRANGE", "none", 0, 1))
            finally:
                await reads.aclose()

        assert own.url.startswith("unix://") and _run(go()) == [b"over the socket", []]
    finally:
        own.close()


def test_a_hung_redis_is_given_up_after_the_timeout_and_the_next_read_reconnects():
    own = RedisServer()
    try:
        redis.Redis.from_url(own.url).set("k", b"v")

        async def go():
            reads = FastReads.for_url(own.url, 0.2)
            assert await reads.execute("GET", "k") == b"v"
            os.kill(own.proc.pid, signal.SIGSTOP)
            loop = asyncio.get_running_loop()
            started = loop.time()
            pending = asyncio.gather(*(reads.execute("GET", "k") for _ in range(3)), return_exceptions=True)
            hung = await asyncio.wait_for(pending, 5)  # a reader that never gives up fails here, not hangs
            waited = loop.time() - started
            os.kill(own.proc.pid, signal.SIGCONT)
            after = await reads.execute("GET", "k")
            await reads.aclose()
            return hung, waited, after

        hung, waited, after = _run(go())
        assert all(isinstance(h, TimeoutError) for h in hung)
        assert 0.2 <= waited < 2.0  # given up at its timeout, not left waiting on the stopped server
        assert after == b"v"
    finally:
        os.kill(own.proc.pid, signal.SIGCONT)
        own.stop()


def test_a_dropped_connection_fails_its_waiting_reads_and_the_next_one_reconnects(redis_url):
    key = f"ur:test:fr:{uuid.uuid4().hex}"
    plain = redis.Redis.from_url(redis_url)
    plain.set(key, b"x", ex=60)

    async def go():
        reads = _reads(redis_url, 2.0)
        own_id = await reads.execute("CLIENT", "ID")
        # a command that holds the connection while Redis closes it: BLPOP waits, CLIENT KILL drops it
        blocked = asyncio.ensure_future(reads.execute("BLPOP", f"{key}:never", 5))
        await asyncio.sleep(0.1)
        plain.client_kill_filter(_id=own_id)
        lost = await asyncio.gather(blocked, return_exceptions=True)
        after = await reads.execute("GET", key)
        await reads.aclose()
        return lost[0], after

    lost, after = _run(go())
    assert isinstance(lost, ConnectionError)
    assert after == b"x"


def test_a_caller_that_gives_up_loses_nothing_for_the_others(redis_url):
    key = f"ur:test:fr:{uuid.uuid4().hex}"
    redis.Redis.from_url(redis_url).set(key, b"x", ex=60)

    async def go():
        reads = _reads(redis_url, 1.0)
        await reads.execute("GET", key)
        first = asyncio.ensure_future(reads.execute("GET", key))
        others = [
            asyncio.ensure_future(reads.execute("LRANGE", f"{key}:l", 0, 1)),
            asyncio.ensure_future(reads.execute("GET", key)),
        ]
        await asyncio.sleep(0)  # all three are written in this iteration
        first.cancel()
        got = await asyncio.gather(*others)
        again = await reads.execute("GET", key)  # the replies still meet their commands
        await reads.aclose()
        return got, again, first.cancelled()

    got, again, cancelled = _run(go())
    assert got == [[], b"x"] and again == b"x" and cancelled


def test_the_service_client_reads_through_it_under_the_breaker(redis_url):
    """`connect(..., auto_pipeline=True)`: GET, MGET and LRANGE take the fast path (nothing goes through
    the auto-pipeline), other commands do not; an open breaker refuses a read before it is sent; over TLS
    there is no fast path."""
    _reads(redis_url, 1.0)
    key = f"ur:test:fr:{uuid.uuid4().hex}"

    async def go():
        breaker = CircuitBreaker(failures=1, open_s=60)
        client = connect(redis_url, 1.0, 8, breaker, auto_pipeline=True)
        await client.set(key, b"x", ex=60)
        pipelines = client.auto.pipelines
        got = await asyncio.gather(client.get(key), client.mget(key, f"{key}:no"), client.lrange(key + ":l", 0, 1))
        reads = client.fast_reads.commands
        pipelined = client.auto.pipelines - pipelines
        with contextlib.suppress(ConnectionError):
            async with breaker:  # one unreachable failure opens it
                raise ConnectionError("down")
        with pytest.raises(BreakerOpen):
            await client.get(key)
        refused = client.fast_reads.commands - reads
        await client.aclose()
        return got, pipelined, reads, refused

    got, pipelined, reads, refused = _run(go())
    assert got == [b"x", [b"x", None], []]
    assert reads == 3 and pipelined == 0 and refused == 0
    assert FastReads.for_url("rediss://127.0.0.1:6380/0", 1.0) is None
