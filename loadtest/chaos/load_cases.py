"""Too much load: an open-loop overload at ten times the measured capacity, with and without admission, and
the feedback that must get through it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from loadtest.chaos.tools import JSON_TYPE, keepalive_loop, overload, post_events, start_service
from loadtest.scenarios import Scenarios
from service.core.settings import Settings


def overload_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    """The capacity first: what one worker answers per second to a closed loop of as many persistent
    connections as it admits at once. Then 10x that, open loop, against it, and against the same service
    with the admission limits off (the baseline, the same run)."""
    sc = Scenarios(bundle)
    bodies = [sc.rank_200() for _ in range(100)]
    duration = 4.0 if quick else 15.0
    server = start_service(bundle, redis_url)
    try:
        limit = Settings.model_fields["max_in_flight"].default  # the service above runs with the defaults

        rate = _capacity(server.url, bodies, limit)
        guarded = overload(server, bodies, 10 * rate, duration)
    finally:
        server.stop()
    unguarded_server = start_service(
        bundle, redis_url, {"UNIRANK_MAX_IN_FLIGHT": "1000000", "UNIRANK_MAX_QUEUE_DELAY_MS": "1000000"}
    )
    try:
        unguarded = overload(unguarded_server, bodies, 10 * rate, duration)
    finally:
        unguarded_server.stop()
    g, u = guarded, unguarded
    return {
        "case": "overload at 10x capacity (open loop, 256 persistent connections)",
        "capacity_rps": round(rate),
        "offered_rps": round(10 * rate),
        "with_admission": g,
        "without_admission": u,
        # bounded: the admitted wait behind at most the in-flight limit's worth of work, not behind the backlog
        # the same load builds up without the limits; health checks do not wait in that queue
        "held": g["other_failures"] == 0
        and g["admitted_rps"] > 0
        and g["rejected_share"] > 0
        and g["admitted_p99_ms"] < 1000
        and g["healthz_p99_ms"] < 250,
        "result": f"capacity {rate:.0f}/s, offered {10 * rate:.0f}/s: {g['rejected_share']:.0%} rejected "
        f"(p50 {g['rejected_p50_ms']} ms, p99 {g['rejected_p99_ms']:.0f} ms), {g['admitted_rps']}/s admitted with p99 "
        f"{g['admitted_p99_ms']:.0f} ms, /healthz p99 {g['healthz_p99_ms']:.0f} ms, {g['other_failures']} other "
        f"failures, p99 from the scheduled arrival {g['p99_from_arrival_ms']:.0f} ms; without the limits (same load): "
        f"p99 {u['admitted_p99_ms']:.0f} ms, /healthz p99 {u['healthz_p99_ms']:.0f} ms, p99 from the scheduled arrival "
        f"{u['p99_from_arrival_ms']:.0f} ms (the backlog grows as long as the overload lasts)",
    }


def events_under_overload_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    """Feedback under a ranking overload: answers served first (their request ids), then ten times the
    capacity of /rank open loop while a client posts a batch of 20 clicks on those answers every 20 ms.
    Every batch must be acknowledged (202) and every click be in the exported log (`unirank logs export`
    of this service's streams), joined to the answer it names."""
    sc = Scenarios(bundle)
    bodies = [sc.rank_200() for _ in range(100)]
    duration = 4.0 if quick else 15.0
    streams = {
        "impressions_stream": f"ur:chaos:imp:{time.time_ns()}",
        "feedback_stream": f"ur:chaos:fb:{time.time_ns()}",
    }
    server = start_service(
        bundle,
        redis_url,
        {
            "UNIRANK_IMPRESSION_STREAM": streams["impressions_stream"],
            "UNIRANK_FEEDBACK_STREAM": streams["feedback_stream"],
        },
    )
    try:
        served = [server.client.post("/rank", content=b, headers=JSON_TYPE).json() for b in bodies[:40]]
        clicks = _ClickStream(server.url, served)
        rate = _capacity(server.url, bodies, Settings.model_fields["max_in_flight"].default)

        async def both() -> dict:
            stop = asyncio.Event()
            stream = asyncio.create_task(clicks.run(stop))
            loaded = await asyncio.to_thread(overload, server, bodies, 10 * rate, duration)
            stop.set()
            await stream
            return loaded

        ranking = asyncio.run(both())
        time.sleep(0.5)  # the impression log's last flush
        exported = _exported_clicks(redis_url, work / "events-under-overload", bundle, streams)
    finally:
        server.stop()
    return _events_report(rate, ranking, clicks, exported)


class _ClickStream:
    """A batch of 20 clicks every 20 ms, each on an item of an answer served before (request id, position)."""

    def __init__(self, url: str, served: list[dict]):
        self.url = url
        self.items = [(a["request_id"], i, item["entity_id"]) for a in served for i, item in enumerate(a["items"])]
        self.statuses: list[int] = []
        self.acknowledged: set[tuple[str, str]] = set()  # (request id, entity)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while not stop.is_set():
                picked = [self.items[(n * 20 + j) % len(self.items)] for j in range(20)]
                batch = [
                    {
                        "user_id": "chaos-feedback",
                        "task": "prequery",
                        "entity_id": e,
                        "action": "click",
                        "request_id": rid,
                        "position": pos,
                    }
                    for rid, pos, e in picked
                ]
                n += 1
                status = await post_events(client, batch)
                self.statuses.append(status)
                if status == 202:
                    self.acknowledged |= {(rid, e) for rid, _, e in picked}
                await asyncio.sleep(0.02)


def _capacity(url: str, bodies: list[bytes], limit: int, seconds: float = 3.0) -> float:
    """What one worker answers per second to a closed loop of as many connections as it admits at once."""

    async def run() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(keepalive_loop(url, bodies, limit, stop))
        await asyncio.sleep(seconds)
        stop.set()
        return sum(1 for _, s, _ in await task if s == 200) / seconds

    return asyncio.run(run())


def _exported_clicks(redis_url: str, out: Path, bundle: Path, streams: dict) -> set[tuple[str, str]]:
    """(request key, entity) of every clicked row in the log `unirank logs export` writes of the streams."""
    import pyarrow.dataset as ds
    import redis

    from unirank.loop.logs import export_log

    export_log(redis.Redis.from_url(redis_url), out, bundle, progress=False, **streams)
    table = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table()
    rows = table.filter(table.column("clicked")).select(["request_key", "target_entity_id"]).to_pylist()
    return {(r["request_key"], r["target_entity_id"]) for r in rows}


def _events_report(rate: float, ranking: dict, clicks: _ClickStream, exported: set) -> dict:
    batches = len(clicks.statuses)
    acknowledged = clicks.statuses.count(202)
    share = acknowledged / max(batches, 1)
    missing = len(clicks.acknowledged - exported)
    return {
        "case": "/events under a 10x /rank overload (open loop), 20 clicks every 20 ms alongside",
        "capacity_rps": round(rate),
        "rank": ranking,
        "event_batches": batches,
        "event_batches_acknowledged": acknowledged,
        "event_statuses": {str(s): clicks.statuses.count(s) for s in sorted(set(clicks.statuses))},
        "clicks_acknowledged": len(clicks.acknowledged),
        "clicks_missing_from_the_export": missing,
        "held": batches > 0 and share >= 0.999 and missing == 0 and ranking["rejected_share"] > 0,
        "result": f"{acknowledged} of {batches} event batches acknowledged ({share:.1%}) while /rank was offered "
        f"{10 * rate:.0f}/s and refused {ranking['rejected_share']:.0%}; {len(clicks.acknowledged)} distinct "
        f"clicks acknowledged, {missing} missing from the exported log",
    }
