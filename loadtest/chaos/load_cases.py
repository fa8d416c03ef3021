"""Too much load: an open-loop overload at ten times the measured capacity, with and without admission."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loadtest.chaos.tools import keepalive_loop, overload, start_service
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

        async def capacity() -> float:
            stop = asyncio.Event()
            task = asyncio.create_task(keepalive_loop(server.url, bodies, limit, stop))
            await asyncio.sleep(3.0)
            stop.set()
            done = await task
            return sum(1 for _, s, _ in done if s == 200) / 3.0

        rate = asyncio.run(capacity())
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
