"""The impression log against a real Redis (or the Redis Cluster): records go to the stream in periods,
what was buffered when a period ended in entries of at most `batch` records (a worker that kept
recording while it flushed used to flush back to back, one tiny entry per round trip), and every
record arrives once, in order; the impression and feedback streams keep what is younger than the
retention and about their byte bound."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

import orjson

from service.core.answer import RankAnswer
from service.core.schemas import Event, RankRequest
from service.store.events import EventStore
from service.store.impressions import ImpressionLog, columns, row
from service.store.redis_client import connect
from service.store.retention import StreamBound
from unirank.core.impression_log import Feedback, decode_entry, encode_impressions


def _run(coro):
    import uvloop

    return uvloop.run(coro)


def test_records_go_in_periods_of_flush_s_each_once_and_in_order(redis_url):
    stream = f"ur:test:impressions:{uuid.uuid4().hex}"
    items = orjson.dumps([{"entity_id": "e1", "score": 0.5}])

    async def go():
        client = connect(redis_url, 2.0, 8)
        log = ImpressionLog(
            client, stream, StreamBound(3600, 1 << 30), buffer=100_000, flush_s=0.05, request_ttl_s=60, batch=500
        )
        log.start()
        n, until = 0, time.perf_counter() + 0.6
        while time.perf_counter() < until:  # a busy worker: records arrive all the time, also during each flush
            log.record(*_served(f"r{n}", items))
            n += 1
            await asyncio.sleep(0)
        await log.stop()
        entries = await client.xrange(stream)
        await client.delete(stream)
        await client.aclose()
        return n, [decode_entry(fields) for _, fields in entries]

    n, entries = _run(go())
    ids = [record.rid for entry in entries for record in entry]
    assert ids == [f"r{i}" for i in range(n)]
    assert n > 1000 and all(1 <= len(entry) <= 500 for entry in entries)
    # per period (12 in 0.6 s, and the last at stop) full entries and one with the rest, not an entry per
    # round trip
    assert len(entries) <= n / 500 + 20


def _served(rid: str, items: bytes = b'[{"entity_id":"e1","score":0.5}]') -> tuple[RankRequest, RankAnswer]:
    """A search request and the answer served for it, as the service records them."""
    request = RankRequest(task="search", country="us", query="q", personalization="cluster")
    answer = RankAnswer(
        items=items, task="search", cache="hit", model="default", model_version="v1", level="cluster", request_id=rid
    )
    return request, answer


def _clicks(rids: list[str]) -> list[Event]:
    return [
        Event(user_id="u-retention", task="prequery", entity_id="e1", action="click", request_id=rid) for rid in rids
    ]


async def _rids(client, impressions: str, feedback: str) -> tuple[list[str], list[str]]:
    served = [r.rid for _, f in await client.xrange(impressions) for r in decode_entry(f)]
    clicked = [Feedback.decode(f[b"f"]).rid for _, f in await client.xrange(feedback)]
    return served, clicked


def test_the_streams_keep_what_is_younger_than_the_retention(redis_url):
    """Entries older than UNIRANK_IMPRESSION_RETENTION_S leave both streams on the next append; newer stay.
    The oldest entry's age (the sink's lag) is measured before and after."""
    tag = uuid.uuid4().hex
    impressions, feedback = f"ur:test:imp:{tag}", f"ur:test:fb:{tag}"

    async def go():
        client = connect(redis_url, 2.0, 8)
        log = ImpressionLog(client, impressions, StreamBound(1.5, 1 << 30), buffer=1000, flush_s=0.02, request_ttl_s=60)
        events = EventStore(client, 60, feedback, StreamBound(1.5, 1 << 30))
        log.start()
        old = [f"old{i}" for i in range(5)]
        for rid in old:
            log.record(*_served(rid))
        await events.store(_clicks(old))
        await asyncio.sleep(0.2)
        before = await _rids(client, impressions, feedback)
        await asyncio.sleep(1.6)
        age = await log.measure_age()
        new = [f"new{i}" for i in range(3)]
        for rid in new:
            log.record(*_served(rid))
        await events.store(_clicks(new))
        await asyncio.sleep(0.2)
        await log.stop()
        after = await _rids(client, impressions, feedback)
        age_after = await log.measure_age()
        await client.delete(impressions, feedback)
        await client.aclose()
        return old, new, before, after, age, age_after

    old, new, before, after, age, age_after = _run(go())
    assert before == (old, old)
    assert after == (new, new)  # every old entry gone, every new one kept
    assert 1.6 <= age < 5 and age_after < 1.0


def test_the_streams_stay_near_their_byte_bound(redis_url):
    """About max_bytes of entries: the entries that fit at the average size written, within a stream node
    (100 entries) of it, since whole nodes are trimmed."""
    tag = uuid.uuid4().hex
    impressions, feedback = f"ur:test:imp:{tag}", f"ur:test:fb:{tag}"
    items = orjson.dumps([{"entity_id": f"e{i:06d}", "score": 1 / (i + 1)} for i in range(20)])

    async def go():
        client = connect(redis_url, 2.0, 8)
        imp_bound, fb_bound = StreamBound(3600, 50_000), StreamBound(3600, 20_000)
        log = ImpressionLog(client, impressions, imp_bound, buffer=10_000, flush_s=0.01, request_ttl_s=60, batch=1)
        events = EventStore(client, 60, feedback, fb_bound)
        log.start()
        for i in range(1000):
            log.record(*_served(f"r{i}", items))
        for i in range(0, 2000, 100):
            await events.store(_clicks([f"r{j}" for j in range(i, i + 100)]))
        await log.stop()
        lengths = await client.xlen(impressions), await client.xlen(feedback)
        await client.delete(impressions, feedback)
        await client.aclose()
        return lengths, imp_bound.maxlen(), fb_bound.maxlen()

    (imp_len, fb_len), imp_max, fb_max = _run(go())
    assert 20 <= imp_max <= 60 and 50 <= fb_max <= 200  # the sizes seen: ~1 kB per answer, ~150 B per click
    assert imp_max <= imp_len <= imp_max + 100
    assert fb_max <= fb_len <= fb_max + 100


def test_an_entry_of_the_earlier_json_format_is_still_read():
    """Logs written before the columnar format (field `b`, a JSON array of records) export as they did."""
    record = {"rid": "r1", "ts": 1, "model": "default", "version": "v1", "experiment": None, "variant": None}
    record |= {"task": "search", "country": "US", "user": None, "query": "q", "source": None, "level": "cluster"}
    items = [{"entity_id": "e1", "score": 0.5}]
    old = decode_entry({b"b": orjson.dumps([record | {"items": items}])})
    request, answer = _served("r1", orjson.dumps(items))
    new = decode_entry({b"a": encode_impressions(columns([row(request, answer)]))})
    assert [replace(r, ts=1) for r in new] == old and new[0].items == items and new[0].country == "US"
