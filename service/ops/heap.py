"""The garbage collector of a serving worker: loaded models kept out of its scans, and its pauses measured.

Contract:
- `settle()` runs after a model is loaded or unloaded: a full collection (what an unloaded model left
  in reference cycles goes now), then `gc.freeze()`: everything alive (the models' tables, the
  interpreter's modules) moves to the permanent generation, which no later collection scans. Without it,
  each full collection walks every object of every loaded model (about 40 ms for the demo bundle: a
  request caught behind it waits that long) and full collections come about once per 100 rank_200
  requests under load. Before freezing it unfreezes, so what was frozen and is garbage now is collected.
- `tune()` (at start) raises the young generation's threshold from 700 to `YOUNG_THRESHOLD` tracked
  objects: a request builds and drops a few hundred, so at 700 the collector ran every few requests
  (about 30 ms per 1,000 rank_200 requests, `python -m loadtest.server_cpu`), at 10,000 it runs when
  objects really accumulate. Cycles still go, a little later.
- `PauseRecorder` times every collection (`gc.callbacks`) and `flush()` moves what it timed into
  `unirank_gc_pause_seconds{generation}`. The callback only appends to a bounded deque: it runs inside
  whatever allocation triggered the collection, possibly while a metric's lock is held, so it must not
  take one; `run()` flushes once a second.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque

from service.ops.metrics import GC_PAUSE

YOUNG_THRESHOLD = 10_000


def tune() -> None:
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def settle() -> None:
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class PauseRecorder:
    def __init__(self, keep: int = 10_000):
        self.pending: deque[tuple[int, float]] = deque(maxlen=keep)  # (generation, seconds)
        self._started = 0.0
        self._observed = [GC_PAUSE.labels(generation=str(g)) for g in range(3)]

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pending.append((info["generation"], time.perf_counter() - self._started))

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def flush(self) -> None:
        while self.pending:
            generation, seconds = self.pending.popleft()
            self._observed[generation].observe(seconds)

    async def run(self, period_s: float = 1.0) -> None:
        try:
            while True:
                await asyncio.sleep(period_s)
                self.flush()
        finally:
            self.flush()
