"""Admission control: a bound on the requests one worker handles at once on the ranking and ingest paths,
and on the size of any request body.

Contract: an ASGI middleware, before anything reads a body. A request to a guarded path is answered at
once with 503, `Retry-After: 1` and the error body, and counted in `unirank_rejected_total{endpoint}`,
when `limit` requests are in flight, or when the event loop has run over `max_queue_delay_s` late for a
whole 100 ms (requests are queueing in the loop before they even reach this check: rejecting then is what
drains the queue, as CoDel does). The work admitted stays bounded, so its latency does, and /healthz,
/readyz and /metrics (never guarded) wait behind at most that much work. A body over `max_body` bytes is
a 413 in the error shape: at once when its Content-Length says so, else as soon as that many bytes have
arrived. While the worker drains (`service.ops.drain`), every response closes its connection.
"""

from __future__ import annotations

import asyncio

import orjson

from service.ops.drain import Drain
from service.ops.metrics import REJECTED


class _TooLarge(Exception):
    pass


def _answer(body: dict, retry: bool) -> tuple[bytes, list]:
    raw = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    return raw, headers + ([(b"retry-after", b"1")] if retry else [])


OVERLOADED = _answer(
    {"detail": [{"field": None, "message": "overloaded: too many requests in flight; retry", "type": "overloaded"}]},
    retry=True,
)


class LoopLag:
    """Whether requests are queueing in the event loop, from how late it runs a timer due every `period_s`.
    On one busy event loop the queue of requests is mostly invisible (tasks created, not yet started); their
    wait is this lag. As in CoDel, a standing queue is a lag above `target_s` for a whole `interval_s`: a
    spike (another process took the CPU for a moment, a worker starting beside this one) is not shed."""

    def __init__(self, target_s: float, interval_s: float = 0.1, period_s: float = 0.005):
        self.target_s, self.interval_s, self.period_s = target_s, interval_s, period_s
        self.standing = False
        self._above_since: float | None = None
        self._task: asyncio.Task | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period_s
            await asyncio.sleep(self.period_s)
            now = loop.time()
            if now - due <= self.target_s:
                self._above_since, self.standing = None, False
            elif self._above_since is None:
                self._above_since = now
            else:
                self.standing = now - self._above_since >= self.interval_s


class Admission:
    def __init__(
        self,
        app,
        drain: Drain,
        limit: int,
        max_body: int,
        max_queue_delay_s: float = float("inf"),
        paths: tuple[str, ...] = ("/rank", "/events"),
    ):
        self.app = app
        self.drain = drain
        self.limit = limit
        self.max_body = max_body
        self.lag = LoopLag(max_queue_delay_s)
        self.too_large = _answer(
            {"detail": [{"field": "body", "message": f"bodies are at most {max_body} bytes", "type": "too_large"}]},
            retry=False,
        )
        self.paths = frozenset(paths)
        self.in_flight = 0
        self._rejected = {p: REJECTED.labels(endpoint=p) for p in paths}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.drain.active:
            send = self.drain.closing(send)
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
                if declared > self.max_body:
                    return await _send(send, 413, self.too_large)
        path = scope["path"]
        guarded = path in self.paths
        if guarded:
            self.lag.ensure_running()
            if self.in_flight >= self.limit or self.lag.standing:
                self._rejected[path].inc()
                return await _send(send, 503, OVERLOADED)
        if declared is not None:  # the server stops the body at its declared length: nothing to count
            self.in_flight += guarded
            try:
                return await self.app(scope, receive, send)
            finally:
                self.in_flight -= guarded
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _TooLarge()
            return message

        async def watched_send(message):
            nonlocal started
            started = True
            await send(message)

        self.in_flight += guarded
        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            if not started:
                await _send(send, 413, self.too_large)
        finally:
            self.in_flight -= guarded


async def _send(send, status: int, answer: tuple[bytes, list]) -> None:
    body, headers = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
