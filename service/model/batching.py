"""Dynamic micro-batching: concurrent /rank requests share one onnxruntime call.

The model takes B contexts and N candidates, each candidate pointing at its context (`cand_ctx`), so
requests concatenate without padding: contexts and candidates are stacked, `cand_ctx` is offset, and
the scores are split back by candidate counts (`concatenate`, `split`, `merged_scoring`). The batcher
holds opaque requests: `run` scores a list of them (for the service, a request is one /rank's context,
candidates and history, and `run` encodes the whole batch's features too: `LoadedBundle.score_batch`).
One inference runs at a time: in a worker thread with `in_thread` (a GPU: the event loop keeps parsing
requests meanwhile), else right in the event loop (one CPU core: a thread would only add switches). A
batch is dispatched, at the earliest once the event-loop iteration in which its first request arrived
is over (so the requests that reach the scorer in the same iteration share the call), when

- the device is free and the oldest waiting request has waited `window_s` (0: at once), or
- the device is free and the waiting requests hold `max_candidates` candidates or more, or
- the device is free and every request in flight in this worker is waiting (nobody else could join:
  a lone request on an idle service pays no window).

So a request waits at most the window, or, when an inference was already running as the window ran
out, until that one inference finished; then its own batch runs. Requests that arrive while the device
is busy join the next batch: the busier the service, the bigger the batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.ops.metrics import BATCH_CANDIDATES, BATCH_REQUESTS, BATCH_WAIT, buffered

_BATCH_WAIT, _BATCH_REQUESTS, _BATCH_CANDIDATES = (buffered(h) for h in (BATCH_WAIT, BATCH_REQUESTS, BATCH_CANDIDATES))

Inputs = dict[str, np.ndarray]


@dataclass
class _Waiting:
    item: Any
    size: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


def concatenate(parts: list[Inputs]) -> tuple[Inputs, list[int]]:
    """One model input from several requests' inputs, and the candidate count of each."""
    sizes = [len(p["cand_ctx"]) for p in parts]
    offsets = np.cumsum([0] + [len(p["ctx_ids"]) for p in parts[:-1]])
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "cand_ctx"}
    merged["cand_ctx"] = np.concatenate([p["cand_ctx"] + o for p, o in zip(parts, offsets, strict=True)])
    return merged, sizes


def split(scores: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(scores, np.cumsum(sizes)[:-1])


def merged_scoring(score: Callable[[Inputs], np.ndarray]) -> Callable[[list[Inputs]], list[np.ndarray]]:
    """A batch's `run` from a scorer of model inputs: one call on the concatenated inputs, split back."""

    def run(parts: list[Inputs]) -> list[np.ndarray]:
        if len(parts) == 1:
            return [score(parts[0])]
        merged, sizes = concatenate(parts)
        return split(score(merged), sizes)

    return run


def _outcome(done: asyncio.Future) -> tuple[BaseException | None, list | None]:
    error = done.exception()
    return error, None if error is not None else done.result()


def input_size(inputs: Inputs) -> int:
    return len(inputs["cand_ctx"])


class _RequestScope:
    """`MicroBatcher.request()`: a plain context manager (a generator-based one costs every request ~2 us)."""

    __slots__ = ("batcher",)

    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    def __enter__(self) -> None:
        self.batcher.in_flight += 1

    def __exit__(self, *exc) -> None:
        self.batcher.in_flight -= 1
        self.batcher._dispatch_if_due()


class MicroBatcher:
    """Collects concurrent score() calls into one `run(items)` call; see the module docstring.
    `size(item)`: its candidates (what `max_candidates` bounds)."""

    def __init__(
        self,
        run: Callable[[list[Any]], list[np.ndarray]],
        window_s: float,
        max_candidates: int,
        size: Callable[[Any], int] = input_size,
        in_thread: bool = True,
    ):
        self.run = run
        self.window_s = window_s
        self.max_candidates = max_candidates
        self.size = size
        self._waiting: list[_Waiting] = []
        self._waiting_candidates = 0
        self._busy = False
        self._due_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="unirank-inference") if in_thread else None
        self.in_flight = 0  # requests inside request(): those that may still join (0: callers don't say)
        self.batches = 0  # counters read by tests and /model
        self.requests = 0

    def request(self) -> _RequestScope:
        """The scope of one request that may reach score(); when it ends, the waiting requests that were
        waiting only for it are dispatched."""
        return _RequestScope(self)

    async def score(self, item) -> np.ndarray:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(item, self.size(item), loop.create_future())
        self._waiting.append(waiting)
        self._waiting_candidates += waiting.size
        if not self._due_scheduled:  # once this iteration is over: who else arrives in it joins
            self._due_scheduled = True
            loop.call_soon(self._on_iteration_end)
        return await waiting.future

    def _on_iteration_end(self) -> None:
        self._due_scheduled = False
        self._dispatch_if_due()
        if self._waiting and self._timer is None and not self._busy:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + self._time_left(), self._on_timer)

    def _time_left(self) -> float:
        return max(0.0, self.window_s - (time.perf_counter() - self._waiting[0].arrived))

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch_if_due(window_over=True)  # loop timers may fire a little early: trust the timer

    def _dispatch_if_due(self, window_over: bool = False) -> None:
        if self._busy or not self._waiting:
            return
        everyone_waits = self.in_flight > 0 and len(self._waiting) >= self.in_flight
        if not (
            window_over or everyone_waits or self._waiting_candidates >= self.max_candidates or self._time_left() <= 0
        ):
            return
        batch, taken = [], 0
        while self._waiting and (not batch or taken + self._waiting[0].size <= self.max_candidates):
            item = self._waiting.pop(0)
            batch.append(item)
            taken += item.size
        self._waiting_candidates -= taken
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._busy = True
        now = time.perf_counter()
        for item in batch:
            _BATCH_WAIT.observe(now - item.arrived)
        _BATCH_REQUESTS.observe(len(batch))
        _BATCH_CANDIDATES.observe(taken)
        self.batches += 1
        self.requests += len(batch)
        loop = asyncio.get_running_loop()
        items = [item.item for item in batch]
        if self._executor is not None:
            done = loop.run_in_executor(self._executor, self.run, items)
            done.add_done_callback(lambda f: self._finished(batch, *_outcome(f)))
            return
        try:
            results = self.run(items)
        except Exception as exc:
            self._finished(batch, exc, None)
        else:
            self._finished(batch, None, results)

    def _finished(self, batch: list[_Waiting], error: BaseException | None, results: list | None) -> None:
        self._busy = False
        for i, item in enumerate(batch):
            if item.future.done():  # the request was cancelled (client went away)
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(results[i])
        if self._waiting:
            self._dispatch_if_due()
            if self._waiting and not self._busy and self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_at(loop.time() + self._time_left(), self._on_timer)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
