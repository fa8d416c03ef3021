"""The worker's garbage collector: loaded models frozen out of its scans, garbage they leave collected,
and its pauses measured (in process, and on the live service's /metrics)."""

from __future__ import annotations

import gc
import re
import time
import weakref

from prometheus_client import REGISTRY

from service.ops import heap


class _Model:
    """Stands for a loaded model that holds a reference cycle (as objects with back-references do)."""

    def __init__(self):
        self.tables = [list(range(100)) for _ in range(100)]
        self.me = self


def test_settle_freezes_what_is_alive_and_collects_what_a_frozen_model_left():
    model = _Model()
    gone = weakref.ref(model)
    heap.settle()
    try:
        assert gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        del model
        gc.collect()
        assert gone() is not None  # frozen: a full collection no longer looks at it, so its cycle stays
        heap.settle()  # what a model's unloading calls
        assert gone() is None
        assert gc.get_freeze_count() < frozen
    finally:
        gc.unfreeze()


def _count(generation: int) -> tuple[float, float]:
    """(seconds, collections) recorded so far for `generation`."""
    labels = {"generation": str(generation)}
    seconds = REGISTRY.get_sample_value("unirank_gc_pause_seconds_sum", labels) or 0.0
    return seconds, REGISTRY.get_sample_value("unirank_gc_pause_seconds_count", labels) or 0.0


def test_every_collection_is_timed_into_the_histogram():
    recorder = heap.PauseRecorder()
    recorder.install()
    try:
        before_sum, before_n = _count(2)
        gc.collect(2)
        gc.collect(2)
        assert len(recorder.pending) >= 2  # the callback only queues: no metric lock inside a collection
        recorder.flush()
        after_sum, after_n = _count(2)
        assert after_n - before_n >= 2
        assert after_sum > before_sum
        assert not recorder.pending
    finally:
        recorder.uninstall()
    gc.collect()
    assert not recorder.pending  # uninstalled: no longer called


def test_the_live_service_reports_its_collections(client):
    """Its start-up settles the heap (one full collection, after the recorder is installed): that collection
    shows on /metrics once the worker has published (once a second)."""
    pattern = re.compile(r'^unirank_gc_pause_seconds_count\{generation="2"\} (\S+)$', re.M)
    deadline = time.monotonic() + 10
    while not ((found := pattern.search(client.get("/metrics").text)) and float(found.group(1)) >= 1):
        assert time.monotonic() < deadline, "the start-up's full collection is not on /metrics"
        time.sleep(0.2)
