"""Admission control: a bound on the requests one worker handles at once, one budget per kind of work, and on
the size of any request body.

Contract: an ASGI middleware, before anything reads a body. Each guarded path belongs to one `Budget`, with
its own count of requests in flight: ranking (`/rank`) and feedback (`/events`) never share one, so an
overload of rankings never sheds a click. A request is answered at once with 503, `Retry-After: 1` and the
error body, and counted in `unirank_rejected_total{endpoint}`, when its budget's `limit` requests are in
flight, or, for a budget that `sheds_on_lag` (ranking), when the event loop has run over
`max_queue_delay_s` late for a whole 100 ms (requests are queueing in the loop before they even reach this
check: rejecting then is what drains the queue, as CoDel does). Feedback is not shed on lag: it is a parse
and one Redis write, and the loop's lag under a ranking overload is ranking's; only its own limit (a bound
on the memory its bodies hold) refuses it. The ranking work admitted stays bounded, so its latency does,
and /healthz, /readyz and /metrics (never guarded) wait behind at most that much work. A body over `max_body` bytes is
a 413 in the error shape: at once when its Content-Length says so, else as soon as that many bytes have
arrived. While the worker drains (`service.ops.drain`), every response closes its connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

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


@dataclass(eq=False)
class Budget:
    """The paths of one kind of work and how many of their requests one worker handles at once."""

    paths: tuple[str, ...]
    limit: int
    sheds_on_lag: bool
    in_flight: int = 0

    def full(self, lag: LoopLag) -> bool:
        return self.in_flight >= self.limit or (self.sheds_on_lag and lag.standing)


class Admission:
    def __init__(self, app, drain: Drain, budgets: list[Budget], max_body: int, max_queue_delay_s: float):
        self.app = app
        self.drain = drain
        self.max_body = max_body
        self.lag = LoopLag(max_queue_delay_s)
        self.too_large = _answer(
            {"detail": [{"field": "body", "message": f"bodies are at most {max_body} bytes", "type": "too_large"}]},
            retry=False,
        )
        self.budgets = {path: budget for budget in budgets for path in budget.paths}
        self._rejected = {p: REJECTED.labels(endpoint=p) for p in self.budgets}

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
        budget = self.budgets.get(path)
        if budget is not None:
            self.lag.ensure_running()
            if budget.full(self.lag):
                self._rejected[path].inc()
                return await _send(send, 503, OVERLOADED)
            budget.in_flight += 1
        try:
            if declared is not None:  # the server stops the body at its declared length: nothing to count
                return await self.app(scope, receive, send)
            return await self._counting_body(scope, receive, send)
        finally:
            if budget is not None:
                budget.in_flight -= 1

    async def _counting_body(self, scope, receive, send):
        """The app with the body counted as it arrives: a 413 once it passes `max_body` bytes."""
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

        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            if not started:
                await _send(send, 413, self.too_large)


async def _send(send, status: int, answer: tuple[bytes, list]) -> None:
    body, headers = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
