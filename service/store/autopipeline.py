"""Auto-pipelining: the Redis commands concurrent requests issue go to Redis together, as one pipeline.

Contract: `AutoPipeline(send_one, make_pipeline).execute(*args, **options)` answers what the command
alone would (its reply, or its error raised), and never sends a command twice. The commands issued in
one event-loop iteration, and those issued while `max_in_flight` pipelines are already on their way, are
sent in one pipeline (non-transactional: each keeps its own reply or error) once the iteration ends or a
pipeline comes back; a lone command goes as itself. With `merge_gets` (one server, not a cluster,
whose keys span slots), the GETs of one batch go as one MGET: ~100 us of client CPU for eight keys
against ~170 us as eight pipelined GETs (a key holding another type answers nil, not WRONGTYPE).
Per-command client work, not Redis, is what a busy worker pays for its reads:
`python -m loadtest.redis_client_cost` measures a history read at ~70 us of CPU one at a time, ~38
eight at once, ~28 eight at once auto-pipelined, and ~15 more for a lone command that waits for its
iteration to end. Requests whose replies come back together also reach the scorer together
(`service.model.batching`). A caller that gives up (cancelled) just does not get its reply; a pipeline that
fails (Redis down, a timeout, the breaker open) fails each of its commands with that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from service.ops.metrics import REDIS_BATCH, buffered

_REDIS_BATCH = buffered(REDIS_BATCH)

_Waiting = tuple[tuple, dict, asyncio.Future]


class AutoPipeline:
    def __init__(
        self,
        send_one: Callable[..., Awaitable[Any]],
        make_pipeline: Callable[[], Any],
        max_in_flight: int = 1,
        merge_gets: bool = False,
    ):
        """send_one(*args, **options): one command the plain way; make_pipeline(): a non-transactional
        pipeline of the same client."""
        self.send_one = send_one
        self.make_pipeline = make_pipeline
        self.max_in_flight = max(1, max_in_flight)
        self.merge_gets = merge_gets
        self._waiting: list[_Waiting] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self.pipelines = 0  # counters read by tests
        self.commands = 0

    async def execute(self, *args, **options):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((args, options, future))
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)  # after this iteration: whoever else issues a command in it joins
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        batch = [w for w in self._waiting if not w[2].done()]  # cancelled callers are not sent
        self._waiting = []
        if not batch:
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        self.pipelines += 1
        self.commands += len(batch)
        _REDIS_BATCH.observe(len(batch))
        try:
            gets = (
                [i for i, (args, options, _) in enumerate(batch) if _plain_get(args, options)]
                if self.merge_gets
                else []
            )
            if len(gets) > 1:
                replies = await self._with_mget(batch, gets)
            elif len(batch) == 1:
                args, options, future = batch[0]
                replies = [await self.send_one(*args, **options)]
            else:
                replies = await self._pipelined([(args, options) for args, options, _ in batch])
        except BaseException as exc:  # the whole pipeline failed: each command did
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, _, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        finally:
            self._in_flight -= 1
            if self._waiting and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _pipelined(self, commands: list[tuple[tuple, dict]]) -> list:
        pipe = self.make_pipeline()
        for args, options in commands:
            pipe.execute_command(*args, **options)
        return await pipe.execute(raise_on_error=False)

    async def _with_mget(self, batch: list[_Waiting], gets: list[int]) -> list:
        """The batch's replies in order, its GETs (at `gets`) answered by one MGET."""
        keys = [batch[i][0][1] for i in gets]
        merged = set(gets)
        others = [i for i in range(len(batch)) if i not in merged]
        if not others:
            return list(await self.send_one("MGET", *keys, keys=keys))
        replies = await self._pipelined([(("MGET", *keys), {"keys": keys})] + [batch[i][:2] for i in others])
        values = replies[0]
        out: list = [None] * len(batch)
        for n, i in enumerate(gets):
            out[i] = values if isinstance(values, Exception) else values[n]
        for reply, i in zip(replies[1:], others, strict=True):
            out[i] = reply
        return out


def _plain_get(args: tuple, options: dict) -> bool:
    """A GET of one key (redis-py passes the key again as `keys`), nothing else asked of the reply."""
    return len(args) == 2 and args[0] == "GET" and options.keys() <= {"keys"}
