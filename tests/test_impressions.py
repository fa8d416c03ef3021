"""The impression log against a real Redis (or the Redis Cluster): records go to the stream in periods,
what was buffered when a period ended in entries of at most `batch` records (a worker that kept
recording while it flushed used to flush back to back, one tiny entry per round trip), and every
record arrives once, in order."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson

from service.store.impressions import ImpressionLog
from service.store.redis_client import connect
from unirank.core.impression_log import ServedImpression, decode_batch


def _run(coro):
    import uvloop

    return uvloop.run(coro)


def test_records_go_in_periods_of_flush_s_each_once_and_in_order(redis_url):
    stream = f"ur:test:impressions:{uuid.uuid4().hex}"
    items = orjson.dumps([{"entity_id": "e1", "score": 0.5}])

    async def go():
        client = connect(redis_url, 2.0, 8)
        log = ImpressionLog(
            client, stream, max_entries=10_000, buffer=100_000, flush_s=0.05, request_ttl_s=60, batch=500
        )
        log.start()
        n, until = 0, time.perf_counter() + 0.6
        while time.perf_counter() < until:  # a busy worker: records arrive all the time, also during each flush
            log.record(
                ServedImpression(
                    rid=f"r{n}",
                    ts=int(time.time() * 1000),
                    model="default",
                    version="v1",
                    experiment=None,
                    variant=None,
                    task="search",
                    country="US",
                    user=None,
                    query="q",
                    source=None,
                    level="cluster",
                    items=items,
                )
            )
            n += 1
            await asyncio.sleep(0)
        await log.stop()
        entries = await client.xrange(stream)
        await client.delete(stream)
        await client.aclose()
        return n, [decode_batch(fields[b"b"]) for _, fields in entries]

    n, entries = _run(go())
    ids = [record.rid for entry in entries for record in entry]
    assert ids == [f"r{i}" for i in range(n)]
    assert n > 1000 and all(1 <= len(entry) <= 500 for entry in entries)
    # per period (12 in 0.6 s, and the last at stop) full entries and one with the rest, not an entry per
    # round trip
    assert len(entries) <= n / 500 + 20
