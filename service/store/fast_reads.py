"""The request path's Redis reads (GET, MGET, LRANGE) on one connection of their own: pipelined, parsed by
hiredis, without redis-py's per-command machinery.

Contract: `FastReads.for_url(url, timeout_s)` is None for a URL it does not serve (TLS, a cluster: redis-py
keeps those); else `execute(*args)` answers a command of READS with the reply redis-py gives for it
(bytes, None, lists of those; an error reply raised as `redis.exceptions.ResponseError`). The commands
issued in one event-loop iteration go out in one write; Redis answers a connection's commands in order,
so each reply goes to the oldest command still waiting. A connection that drops, or whose oldest
unanswered batch waits longer than `timeout_s`, is closed: every command waiting on it fails with
redis-py's ConnectionError or TimeoutError (what the circuit breaker counts), and the next command opens a
new one, sending AUTH and SELECT as the URL asks. A caller that gives up (cancelled) just does not get
its reply. `python -m loadtest.redis_client_cost` measures what this saves per read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.ops.metrics import REDIS_BATCH, buffered

READS = frozenset({"GET", "MGET", "LRANGE"})
_REDIS_BATCH = buffered(REDIS_BATCH)


def _bulk(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return repr(value).encode()
    raise TypeError(f"a Redis argument is bytes, str, int or float, not {type(value).__name__}")


def pack(args: tuple) -> bytes:
    """One command in the Redis protocol (RESP)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        value = _bulk(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One socket: what is to be written this iteration, the futures waiting for replies (oldest first),
    and when each write went out, so that one timer finds a batch Redis is too slow to answer."""

    def __init__(self, owner: FastReads) -> None:
        self.owner = owner
        self.timeout_s = owner.timeout_s
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future] = deque()
        self.outgoing: list[bytes] = []
        self.lost: BaseException | None = None
        self.replies = 0  # replies received so far
        self._written = 0  # commands written so far
        self._writes: deque[tuple[float, int]] = deque()  # (when, commands written by then) per write
        self._timer: asyncio.TimerHandle | None = None
        self._scheduled = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def submit(self, command: bytes, future: asyncio.Future) -> None:
        self.outgoing.append(command)
        self.waiting.append(future)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)  # after this iteration: its other commands join

    def _flush(self) -> None:
        self._scheduled = False
        if self.outgoing:  # else failed meanwhile: its commands have their error
            batch, self.outgoing = self.outgoing, []
            self.owner.writes += 1
            self.owner.commands += len(batch)
            _REDIS_BATCH.observe(len(batch))
            self.write(batch)

    def write(self, commands: list[bytes]) -> None:
        self.transport.write(b"".join(commands))
        self._written += len(commands)
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._writes.append((now, self._written))
        if self._timer is None:
            self._timer = loop.call_at(now + self.timeout_s, self._check)

    def _check(self) -> None:
        """The oldest write not fully answered: given up once it is `timeout_s` old, else checked again then."""
        self._timer = None
        while self._writes and self._writes[0][1] <= self.replies:
            self._writes.popleft()
        if not self._writes or self.lost is not None:
            return
        loop = asyncio.get_running_loop()
        due = self._writes[0][0] + self.timeout_s
        if loop.time() >= due:
            self.fail(RedisTimeoutError(f"Timeout reading from Redis ({self.timeout_s} s)"))
        else:
            self._timer = loop.call_at(due, self._check)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                self.replies += 1
                future = self.waiting.popleft()
                if future.done():  # its caller gave up
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # not RESP, or a reply nobody asked for
            self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.fail(RedisConnectionError(f"Connection to Redis lost: {exc}" if exc else "Connection to Redis closed"))

    def fail(self, error: BaseException) -> None:
        """Close the socket; every command waiting on it, or about to be written, fails with `error`."""
        if self.lost is None:
            self.lost = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        waiting, self.waiting, self.outgoing = self.waiting, deque(), []
        for future in waiting:
            if not future.done():
                future.set_exception(self.lost)


class FastReads:
    def __init__(self, options: dict, timeout_s: float):
        """options: redis-py's `parse_url` of the server's URL (`for_url`)."""
        self.path: str | None = options.get("path")
        self.host: str = options.get("host", "localhost")
        self.port: int = int(options.get("port", 6379))
        self.timeout_s = timeout_s
        self.handshake: list[tuple] = []
        if options.get("password") is not None:
            user = options.get("username")
            self.handshake.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            self.handshake.append(("SELECT", int(options["db"])))
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task | None = None
        self.writes = 0  # counters read by tests
        self.commands = 0

    @classmethod
    def for_url(cls, url: str, timeout_s: float) -> FastReads | None:
        options = parse_url(url)
        if options.get("connection_class") is SSLConnection:
            return None
        return cls(options, timeout_s)

    async def execute(self, *args) -> Any:
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
            if connection.lost is not None:  # lost again while this caller waited for it
                raise connection.lost
        future = asyncio.get_running_loop().create_future()
        connection.submit(pack(args), future)
        return await future

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            self._connecting.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, task: asyncio.Task) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._connection = task.result()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(max(self.timeout_s, 0.5)):
                make = lambda: _Connection(self)  # noqa: E731
                if self.path is not None:
                    _, connection = await loop.create_unix_connection(make, self.path)
                else:
                    _, connection = await loop.create_connection(make, self.host, self.port)
                for command in self.handshake:  # AUTH, SELECT
                    future = loop.create_future()
                    connection.waiting.append(future)
                    connection.write([pack(command)])
                    try:
                        await future
                    except ResponseError as exc:  # a wrong password: Redis cannot be used, as redis-py says
                        raise RedisConnectionError(f"Redis refused {command[0]}: {exc}") from None
        except BaseException as exc:
            if connection is not None:
                connection.fail(RedisConnectionError("Redis connection not set up"))
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"Timeout connecting to Redis ({self.timeout_s} s)") from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
            raise
        return connection

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.fail(RedisConnectionError("Redis client closed"))
            self._connection = None
