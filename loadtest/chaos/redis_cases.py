"""Faults in Redis under load: killed and restarted (AOF, fsync always), and hung (SIGSTOP)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from loadtest.chaos.tools import JSON_TYPE, DurableRedis, keepalive_loop, p99, post_events, start_service
from loadtest.scenarios import Scenarios
from service.core.settings import Settings
from unirank.core.history import history_key


def redis_kill_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    durable = DurableRedis()
    server = start_service(bundle, durable.url, {"UNIRANK_REDIS_BREAKER_OPEN_S": "0.5"})
    sc = Scenarios(bundle)
    ranks = [sc.rank_200() for _ in range(50)]
    events = _EventStream(server.url)
    try:
        rank_outcomes = asyncio.run(_kill_and_restart(durable, server.url, ranks, events, 6.0 if quick else 20.0))
        client = redis.Redis.from_url(durable.url)
        missing = sum(f"{e}|1".encode() not in client.lrange(history_key(u), 0, -1) for u, e in events.acknowledged)
        return _kill_report(rank_outcomes, events, missing)
    finally:
        server.stop()
        durable.stop()


class _EventStream:
    """Batches of 10 clicks posted every 10 ms until stopped: which were acknowledged (202), every status,
    and how long after Redis came back the first batch was acknowledged."""

    def __init__(self, url: str):
        self.url = url
        self.acknowledged: list[tuple[str, str]] = []  # (user, entity) of every event acknowledged
        self.statuses: list[int] = []
        self.restarted_at: float | None = None
        self.first_ack_after: float | None = None

    async def run(self, stop: threading.Event) -> None:
        n = 0
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while not stop.is_set():
                batch = [
                    {"user_id": f"chaos-{n}-{j}", "task": "search", "entity_id": f"e{1 + j:06d}", "action": "click"}
                    for j in range(10)
                ]
                n += 1
                status = await post_events(client, batch)
                self.statuses.append(status)
                if status == 202:
                    self.acknowledged.extend((e["user_id"], e["entity_id"]) for e in batch)
                    if self.restarted_at is not None and self.first_ack_after is None:
                        self.first_ack_after = time.monotonic() - self.restarted_at
                await asyncio.sleep(0.01)


async def _kill_and_restart(
    durable: DurableRedis, url: str, ranks: list[bytes], events: _EventStream, duration: float
) -> list:
    """/rank (4 persistent connections) and the event stream for `duration`: Redis SIGKILLed after a third
    of it and started again a second later. Returns the /rank outcomes."""
    stop = threading.Event()
    load = asyncio.gather(keepalive_loop(url, ranks, 4, stop), events.run(stop))
    await asyncio.sleep(duration / 3)
    durable.kill()
    await asyncio.sleep(1.0)
    durable.start()
    events.restarted_at = time.monotonic()
    await asyncio.sleep(duration * 2 / 3)
    stop.set()
    return (await load)[0]


def _kill_report(rank_outcomes: list, events: _EventStream, missing: int) -> dict:
    failed_rank = sum(1 for outcome, status, _ in rank_outcomes if outcome != "ok" or status != 200)
    recover = events.first_ack_after if events.first_ack_after is not None else float("nan")
    refused = events.statuses.count(503)
    return {
        "case": "Redis SIGKILLed under load, restarted (AOF, appendfsync always)",
        "rank_requests": len(rank_outcomes),
        "rank_failed": failed_rank,
        "events_acknowledged": len(events.acknowledged),
        "events_missing": missing,
        "event_batches_refused_503": refused,
        "seconds_to_acknowledge_again": round(recover, 2),
        "held": failed_rank == 0 and missing == 0 and events.first_ack_after is not None,
        "result": f"/rank {failed_rank} failed of {len(rank_outcomes)}; {len(events.acknowledged)} events "
        f"acknowledged, {missing} missing; {refused} batches refused (503) meanwhile; "
        f"acknowledged again {recover:.1f} s after the restart",
    }


def redis_hang_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    """Redis hung (SIGSTOP: every call times out instead of being refused) under sequential /rank and
    /events: their latency healthy, hung (the breaker opens after a few timeouts), and after SIGCONT."""
    durable = DurableRedis()
    server = start_service(bundle, durable.url)
    phase = _Phase(server.url, Scenarios(bundle), 3.0 if quick else 10.0)
    try:
        healthy = phase.run()
        durable.proc.send_signal(signal.SIGSTOP)
        hung = phase.run()
        breaker = server.client.get("/readyz").json()["redis_breaker"]
        durable.proc.send_signal(signal.SIGCONT)
        time.sleep(Settings.model_fields["redis_breaker_open_s"].default + 0.5)
        return _hang_report(healthy, hung, phase.run(), breaker)
    finally:
        if durable.proc.poll() is None:
            durable.proc.send_signal(signal.SIGCONT)
        server.stop()
        durable.stop()


class _Phase:
    """/rank (each a cache miss: a key no earlier request used, in every phase) and /events, sequentially in
    two loops of their own for `seconds`; their latencies and statuses."""

    EVENT = [{"user_id": "chaos-hang", "task": "search", "entity_id": "e000001", "action": "click"}]

    def __init__(self, url: str, scenarios: Scenarios, seconds: float):
        self.url, self.scenarios, self.seconds = url, scenarios, seconds
        self.keys = itertools.count()

    def run(self) -> dict:
        ranks, events, rank_codes, event_codes = [], [], [], []
        end = time.monotonic() + self.seconds

        def rank_loop() -> None:
            with httpx.Client(base_url=self.url, timeout=30) as client:
                while time.monotonic() < end:
                    body = self.scenarios.keystroke_miss(next(self.keys))
                    started = time.perf_counter()
                    rank_codes.append(client.post("/rank", content=body, headers=JSON_TYPE).status_code)
                    ranks.append(time.perf_counter() - started)

        def events_loop() -> None:
            with httpx.Client(base_url=self.url, timeout=30) as client:
                while time.monotonic() < end:
                    started = time.perf_counter()
                    event_codes.append(client.post("/events", json=self.EVENT).status_code)
                    events.append(time.perf_counter() - started)
                    time.sleep(0.01)

        loops = [threading.Thread(target=rank_loop), threading.Thread(target=events_loop)]
        for loop in loops:
            loop.start()
        for loop in loops:
            loop.join()
        return {
            "rank_p50_ms": round(float(np.percentile(ranks, 50)) * 1000, 1),
            "rank_p99_ms": round(p99(ranks), 1),
            "rank_statuses": {str(c): rank_codes.count(c) for c in sorted(set(rank_codes))},
            "events_p50_ms": round(float(np.percentile(events, 50)) * 1000, 1),
            "events_statuses": {str(c): event_codes.count(c) for c in sorted(set(event_codes))},
        }


def _hang_report(healthy: dict, hung: dict, after: dict, breaker: str) -> dict:
    rank_failed = sum(n for code, n in hung["rank_statuses"].items() if code != "200")
    return {
        "case": "Redis hung (SIGSTOP) under sequential /rank and /events",
        "healthy": healthy,
        "hung": hung,
        "breaker_while_hung": breaker,
        "after_sigcont": after,
        "held": rank_failed == 0
        and hung["rank_p50_ms"] < 5 * max(healthy["rank_p50_ms"], 2.0)
        and set(hung["events_statuses"]) <= {"503"}
        and "202" in after["events_statuses"]
        and breaker == "open",
        "result": f"/rank p50 {healthy['rank_p50_ms']} ms healthy, {hung['rank_p50_ms']} ms hung (p99 "
        f"{hung['rank_p99_ms']:.0f} ms; breaker {breaker}; {rank_failed} failed), {after['rank_p50_ms']} ms after "
        f"SIGCONT; /events while hung: {hung['events_statuses']} (p50 {hung['events_p50_ms']} ms), none accepted "
        "unstored",
    }
