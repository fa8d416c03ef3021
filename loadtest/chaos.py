"""`unirank chaos`: the fault suite — each case a real fault against a live service and a real Redis,
bounded in time, reported as a table of what held (JSON + markdown in results/chaos-<timestamp>.*).

Cases:
1. schemathesis over every operation of the OpenAPI document (bounded examples): responses 5xx;
2. hostile bodies (invalid UTF-8, 10 MB, nesting 10,000 deep, 100k candidates, k = 10^9, a 1 MB id, NUL
   and emoji in ids): every answer a 4xx (emoji ids are valid: 200), server RSS growth;
3. Redis SIGKILLed under /rank and /events load and restarted (AOF, appendfsync always): failed /rank,
   events acknowledged (202) but missing afterwards, seconds until /events is acknowledged again;
   and Redis hung (SIGSTOP): /rank latency healthy, hung (the circuit breaker open) and after SIGCONT;
4. an overload at 10x the measured capacity (open loop): share rejected (503), p99 of the admitted, p99
   of /healthz meanwhile;
5. SIGTERM under load: requests the server accepted and dropped without an answer;
6. a worker SIGKILLed under load (two workers): failed requests, and whether a worker comes back;
7. the bundle directory corrupted, then removed, under a running service: answers keep coming, the same.
`--quick` shortens each case (what CI runs); the full run is what docs/resilience.md's table reports.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import redis

from loadtest.processes import AppServer, RedisServer
from loadtest.report import markdown_table
from loadtest.scenarios import Scenarios
from service.core.settings import Settings
from service.store.redis_server import free_port, redis_server_binary
from unirank.core.history import history_key

TOKEN = "chaos-admin-token"
JSON_TYPE = {"content-type": "application/json"}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _service(bundle: Path, redis_url: str, extra: dict | None = None, workers: int = 1) -> AppServer:
    env = {
        "UNIRANK_BUNDLE": str(bundle),
        "REDIS_URL": redis_url,
        "UNIRANK_ADMIN_TOKEN": TOKEN,
        "UNIRANK_CONTROL_KEY": f"ur:control:chaos:{os.getpid()}:{time.time_ns()}",
        "UNIRANK_WORKERS": str(workers),
        "UNIRANK_REPLICA_ID": f"chaos-{time.time_ns()}",
    } | (extra or {})
    if workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="unirank-chaos-prom-")
    server = AppServer("service.api:create_app", env, workers=workers)
    server.wait_ready()
    return server


# ---- raw HTTP, so that "refused", "dropped" and "answered" can be told apart -------------------------------


ERROR_TYPES: dict[tuple[int, str], int] = {}  # (status, error type) of every 5xx answer this process saw


class _Connection:
    """One persistent HTTP/1.1 connection, as in a load balancer's pool. `request` gives ("ok", status,
    closes) for a complete answer, ("refused", 0, True) when no connection could be made, and ("dropped", 0,
    True) when the request was written and no complete answer came."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, path: str, body: bytes | None) -> tuple[str, int, bool]:
        """POST `body` to `path` (GET when `body` is None)."""
        if self.streams is None:
            try:
                self.streams = await asyncio.open_connection(self.host, self.port)
            except OSError:
                return "refused", 0, True
        reader, writer = self.streams
        if body is None:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        else:
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
            body = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, AttributeError):
            self.close()
            return "dropped", 0, True
        closes = b"connection: close" in head.lower()
        if closes:
            self.close()
        status = int(head[9:12])
        if status >= 500 and (kind := re.search(rb'"type":"(\w+)"', body)):
            ERROR_TYPES[status, kind.group(1).decode()] = ERROR_TYPES.get((status, kind.group(1).decode()), 0) + 1
        return "ok", status, closes

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split(":")
    return host, int(port)


async def _keepalive_loop(
    url: str, bodies: list[bytes], concurrency: int, stop, routable=lambda: True
) -> list[tuple[str, int, float]]:
    """A closed loop over persistent connections; `routable()` false (a balancer that saw /readyz fail)
    stops new requests, as a balancer takes a draining backend out."""
    host, port = _host_port(url)
    out: list[tuple[str, int, float]] = []

    async def user(n: int) -> None:
        i, conn = n, _Connection(host, port)
        while not stop.is_set():
            if not routable():
                await asyncio.sleep(0.01)
                continue
            started = time.perf_counter()
            outcome, status, _ = await conn.request("/rank", bodies[i % len(bodies)])
            out.append((outcome, status, time.perf_counter() - started))
            i += concurrency
            if outcome == "refused":
                await asyncio.sleep(0.02)
        conn.close()

    await asyncio.gather(*(user(n) for n in range(concurrency)))
    return out


async def _open_loop_pool(
    url: str, bodies: list[bytes], rate: float, duration: float, connections: int
) -> tuple[list[tuple[str, int, float]], float]:
    """Open-loop arrivals at `rate` per second whatever the answers (an overload does not slow its clients
    down), sent over a pool of `connections` persistent connections like a load balancer's; an arrival that
    finds every connection busy waits for one, and its latency counts from its scheduled arrival, so the
    client's own queue is not hidden (no coordinated omission); the pool is opened (one GET /healthz on
    each connection) before the clock starts. Returns (outcome, status, seconds from the scheduled
    arrival, seconds from the moment it was written) per request, and the rate sent."""
    host, port = _host_port(url)
    queue: asyncio.Queue = asyncio.Queue()
    out: list[tuple[str, int, float, float]] = []
    pool = [_Connection(host, port) for _ in range(connections)]
    await asyncio.gather(*(conn.request("/healthz", None) for conn in pool))

    async def sender(conn: _Connection) -> None:
        while (item := await queue.get()) is not None:
            due, body = item
            sent = time.perf_counter()
            outcome, status, _ = await conn.request("/rank", body)
            out.append((outcome, status, time.perf_counter() - due, time.perf_counter() - sent))
        conn.close()

    senders = [asyncio.create_task(sender(conn)) for conn in pool]
    start, n = time.perf_counter(), int(rate * duration)
    for i in range(n):
        due = start + i / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, bodies[i % len(bodies)]))
    sent_rate = n / (time.perf_counter() - start)
    for _ in senders:
        queue.put_nowait(None)
    await asyncio.gather(*senders)
    return out, sent_rate


def _p99(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values) * 1000, 99)) if values else float("nan")


# ---- the cases ---------------------------------------------------------------------------------------------


def schemathesis_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    server = _service(bundle, redis_url)
    try:
        st = Path(sys.executable).parent / "st"
        examples = 10 if quick else 100
        cmd = [
            str(st),
            "run",
            f"{server.url}/openapi.json",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "not_a_server_error",
            "-n",
            str(examples),
            "--seed",
            "0",
            "--no-color",
            "--max-time",
            "60" if quick else "300",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=600)
        text = done.stdout + done.stderr
        generated = int(m.group(1)) if (m := re.search(r"(\d+) generated", text)) else 0
        failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", text)) else 0
        return {
            "case": "OpenAPI fuzzing (schemathesis, every operation)",
            "examples_per_operation": examples,
            "generated": generated,
            "server_errors": failed,
            "exit_code": done.returncode,
            "held": done.returncode == 0 and generated > 0 and failed == 0,
            "result": f"{generated} cases, {failed} with a 5xx",
        }
    finally:
        server.stop()


HOSTILE = {
    "invalid UTF-8": (b'{"task": "prequery", "country": "\xff\xfe"}', {4}),
    "10 MB body": (b'{"task": "prequery", "country": "US", "query": "' + b"x" * (10 << 20) + b'"}', {4}),
    "nesting 10,000 deep": (b"[" * 10_000 + b"]" * 10_000, {4}),
    "100k candidates": (
        orjson.dumps({"task": "prequery", "country": "US", "candidates": [f"e{i}" for i in range(100_000)]}),
        {4},
    ),
    "k = 10^9": (b'{"task": "prequery", "country": "US", "k": 1000000000}', {4}),
    "1 MB id": (orjson.dumps({"task": "prequery", "country": "US", "user_id": "u" * (1 << 20)}), {4}),
    "NUL in ids": (orjson.dumps({"task": "prequery", "country": "US", "candidates": ["e000001", "e\u0000x"]}), {4}),
    "emoji ids (valid)": (orjson.dumps({"task": "prequery", "country": "US", "candidates": ["🎬", "e000001"]}), {2}),
}


def hostile_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    server = _service(bundle, redis_url)
    try:
        before = _rss_mb(server.proc.pid)
        rounds = 3 if quick else 20
        statuses: dict[str, set[int]] = {}
        slowest = 0.0
        for _ in range(rounds):
            for name, (body, _) in HOSTILE.items():
                started = time.perf_counter()
                r = server.client.post("/rank", content=body, headers={"content-type": "application/json"})
                slowest = max(slowest, time.perf_counter() - started)
                statuses.setdefault(name, set()).add(r.status_code)
        growth = _rss_mb(server.proc.pid) - before
        ok = all({s // 100 for s in statuses[n]} <= want for n, (_, want) in HOSTILE.items())
        return {
            "case": "hostile bodies",
            "statuses": {n: sorted(s) for n, s in statuses.items()},
            "rounds": rounds,
            "rss_growth_mb": round(growth, 1),
            "slowest_ms": round(slowest * 1000, 1),
            "held": ok and growth < 200,
            "result": ", ".join(f"{n}: {'/'.join(map(str, sorted(s)))}" for n, s in statuses.items())
            + f"; RSS +{growth:.0f} MB after {rounds} rounds; slowest {slowest * 1000:.0f} ms",
        }
    finally:
        server.stop()


class DurableRedis:
    """A redis-server on a fixed port and directory with AOF fsynced on every write: killable, restartable."""

    def __init__(self):
        self.port, self.dir = free_port(), Path(tempfile.mkdtemp(prefix="unirank-chaos-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_kill_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    durable = DurableRedis()
    server = _service(bundle, durable.url, {"UNIRANK_REDIS_BREAKER_OPEN_S": "0.5"})
    sc = Scenarios(bundle)
    ranks = [sc.rank_200() for _ in range(50)]
    duration = 6.0 if quick else 20.0
    acknowledged: list[tuple[str, str]] = []
    event_statuses: list[int] = []
    restarted_at: list[float] = []
    first_ack_after: list[float] = []
    stop = threading.Event()

    async def events() -> None:
        n = 0
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                batch = [
                    {"user_id": f"chaos-{n}-{j}", "task": "search", "entity_id": f"e{1 + j:06d}", "action": "click"}
                    for j in range(10)
                ]
                n += 1
                try:
                    status = (await client.post("/events", json=batch)).status_code
                except httpx.HTTPError:
                    status = 0
                event_statuses.append(status)
                if status == 202:
                    acknowledged.extend((e["user_id"], e["entity_id"]) for e in batch)
                    if restarted_at and not first_ack_after:
                        first_ack_after.append(time.monotonic() - restarted_at[0])
                await asyncio.sleep(0.01)

    async def run() -> list:
        loop = asyncio.gather(_keepalive_loop(server.url, ranks, 4, stop), events())
        await asyncio.sleep(duration / 3)
        durable.kill()
        await asyncio.sleep(1.0)
        durable.start()
        restarted_at.append(time.monotonic())
        await asyncio.sleep(duration * 2 / 3)
        stop.set()
        return (await loop)[0]

    try:
        rank_outcomes = asyncio.run(run())
        client = redis.Redis.from_url(durable.url)
        missing = sum(f"{e}|1".encode() not in client.lrange(history_key(u), 0, -1) for u, e in acknowledged)
        failed_rank = sum(1 for outcome, status, _ in rank_outcomes if outcome != "ok" or status != 200)
        recover = first_ack_after[0] if first_ack_after else float("nan")
        return {
            "case": "Redis SIGKILLed under load, restarted (AOF, appendfsync always)",
            "rank_requests": len(rank_outcomes),
            "rank_failed": failed_rank,
            "events_acknowledged": len(acknowledged),
            "events_missing": missing,
            "event_batches_refused_503": event_statuses.count(503),
            "seconds_to_acknowledge_again": round(recover, 2),
            "held": failed_rank == 0 and missing == 0 and bool(first_ack_after),
            "result": f"/rank {failed_rank} failed of {len(rank_outcomes)}; {len(acknowledged)} events acknowledged, "
            f"{missing} missing; {event_statuses.count(503)} batches refused (503) meanwhile; "
            f"acknowledged again {recover:.1f} s after the restart",
        }
    finally:
        server.stop()
        durable.stop()


def _overload(server: AppServer, bodies: list[bytes], rate: float, duration: float) -> dict:
    """`rate` offered open-loop over 256 persistent connections for `duration` s while a prober times
    /healthz every 50 ms; latencies are the server's (from the moment a request is written)."""
    health: list[float] = []
    done_flag = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not done_flag.is_set():
                started = time.perf_counter()
                client.get("/healthz")
                health.append(time.perf_counter() - started)
                time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.perf_counter()
    outcomes, _ = asyncio.run(_open_loop_pool(server.url, bodies, rate, duration, connections=256))
    elapsed = time.perf_counter() - started
    done_flag.set()
    prober.join()
    admitted = [sent for _, s, _, sent in outcomes if s == 200]
    rejected = [sent for _, s, _, sent in outcomes if s == 503]
    return {
        "answered_rps": round(len(outcomes) / elapsed),
        "admitted_rps": round(len(admitted) / elapsed),
        "rejected_share": round(len(rejected) / max(len(outcomes), 1), 3),
        "admitted_p50_ms": round(float(np.percentile(admitted, 50)) * 1000, 1) if admitted else None,
        "admitted_p99_ms": round(_p99(admitted), 1),
        "rejected_p50_ms": round(float(np.percentile(rejected, 50)) * 1000, 1) if rejected else None,
        "rejected_p99_ms": round(_p99(rejected), 1),
        "healthz_p99_ms": round(_p99(health), 1),
        # from the scheduled arrival: what the arrivals waited for a free connection of the pool too
        "p99_from_arrival_ms": round(_p99([due for _, _, due, _ in outcomes]), 1),
        "other_failures": sum(1 for _, s, _, _ in outcomes if s not in (200, 503)),
    }


def redis_hang_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    """Redis hung (SIGSTOP: every call times out instead of being refused) under sequential /rank and
    /events: their latency healthy, hung (the breaker opens after a few timeouts), and after SIGCONT."""
    durable = DurableRedis()
    server = _service(bundle, durable.url)
    sc = Scenarios(bundle)
    keys = itertools.count()  # a key no earlier request used, in every phase: each /rank is a cache miss
    phase_s = 3.0 if quick else 10.0
    event = [{"user_id": "chaos-hang", "task": "search", "entity_id": "e000001", "action": "click"}]

    def phase() -> dict:
        """/rank and /events in two loops of their own for `phase_s`."""
        ranks, events, rank_codes, event_codes = [], [], [], []
        end = time.monotonic() + phase_s

        def rank_loop() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while time.monotonic() < end:
                    body = sc.keystroke_miss(next(keys))
                    started = time.perf_counter()
                    rank_codes.append(client.post("/rank", content=body, headers=JSON_TYPE).status_code)
                    ranks.append(time.perf_counter() - started)

        def events_loop() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while time.monotonic() < end:
                    started = time.perf_counter()
                    event_codes.append(client.post("/events", json=event).status_code)
                    events.append(time.perf_counter() - started)
                    time.sleep(0.01)

        loops = [threading.Thread(target=rank_loop), threading.Thread(target=events_loop)]
        for loop in loops:
            loop.start()
        for loop in loops:
            loop.join()
        return {
            "rank_p50_ms": round(float(np.percentile(ranks, 50)) * 1000, 1),
            "rank_p99_ms": round(_p99(ranks), 1),
            "rank_statuses": {str(c): rank_codes.count(c) for c in sorted(set(rank_codes))},
            "events_p50_ms": round(float(np.percentile(events, 50)) * 1000, 1),
            "events_statuses": {str(c): event_codes.count(c) for c in sorted(set(event_codes))},
        }

    try:
        healthy = phase()
        durable.proc.send_signal(signal.SIGSTOP)
        hung = phase()
        breaker = server.client.get("/readyz").json()["redis_breaker"]
        durable.proc.send_signal(signal.SIGCONT)
        time.sleep(Settings.model_fields["redis_breaker_open_s"].default + 0.5)
        after = phase()
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
    finally:
        if durable.proc.poll() is None:
            durable.proc.send_signal(signal.SIGCONT)
        server.stop()
        durable.stop()


def overload_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    """The capacity first: what one worker answers per second to a closed loop of as many persistent
    connections as it admits at once. Then 10x that, open loop, against it, and against the same service
    with the admission limits off (the baseline, the same run)."""
    sc = Scenarios(bundle)
    bodies = [sc.rank_200() for _ in range(100)]
    duration = 4.0 if quick else 15.0
    server = _service(bundle, redis_url)
    try:
        limit = Settings.model_fields["max_in_flight"].default  # the service above runs with the defaults

        async def capacity() -> float:
            stop = asyncio.Event()
            task = asyncio.create_task(_keepalive_loop(server.url, bodies, limit, stop))
            await asyncio.sleep(3.0)
            stop.set()
            done = await task
            return sum(1 for _, s, _ in done if s == 200) / 3.0

        rate = asyncio.run(capacity())
        guarded = _overload(server, bodies, 10 * rate, duration)
    finally:
        server.stop()
    unguarded_server = _service(
        bundle, redis_url, {"UNIRANK_MAX_IN_FLIGHT": "1000000", "UNIRANK_MAX_QUEUE_DELAY_MS": "1000000"}
    )
    try:
        unguarded = _overload(unguarded_server, bodies, 10 * rate, duration)
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


def sigterm_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    """`unirank serve` (what the images run) under load over persistent connections, then SIGTERM."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | {
        "REDIS_URL": redis_url,
        "UNIRANK_GRACEFUL_SHUTDOWN_S": "10",
        "UNIRANK_CONTROL_KEY": f"ur:control:chaos:{time.time_ns()}",
    }
    cmd = [
        sys.executable,
        "-m",
        "unirank.cli",
        "serve",
        "--bundle",
        str(bundle),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("unirank serve did not become ready")
        time.sleep(0.2)
    sc = Scenarios(bundle)
    bodies = [sc.rank_200() for _ in range(50)]
    stop = threading.Event()
    in_rotation = [True]

    async def balancer() -> None:
        """Polls /readyz as a load balancer's health check does (every 0.5 s) and takes the backend out of
        rotation on the first failure; the load goes through it only while it is in."""
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:
            while not stop.is_set() and in_rotation[0]:
                try:
                    in_rotation[0] = (await client.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    in_rotation[0] = False
                await asyncio.sleep(0.5)

    async def run() -> tuple[list, float]:
        task = asyncio.create_task(_keepalive_loop(url, bodies, 8, stop, routable=lambda: in_rotation[0]))
        checks = asyncio.create_task(balancer())
        await asyncio.sleep(2.0 if quick else 5.0)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.to_thread(proc.wait, 60)
        stopped = time.monotonic() - signalled
        stop.set()
        await checks
        return await task, stopped

    outcomes, stopped = asyncio.run(run())
    dropped = sum(1 for o, _, _ in outcomes if o == "dropped")
    answered = sum(1 for o, s, _ in outcomes if o == "ok" and s == 200)
    refused = sum(1 for o, _, _ in outcomes if o == "refused")
    # uvicorn re-raises the signal it was stopped by once it has shut down: death by SIGTERM is the clean end
    clean = proc.returncode in (0, -signal.SIGTERM)
    return {
        "case": "SIGTERM under load (unirank serve, persistent connections, a balancer polling /readyz)",
        "answered": answered,
        "dropped": dropped,
        "refused": refused,
        "exit_code": proc.returncode,
        "seconds_to_exit": round(stopped, 1),
        "held": answered > 0 and dropped == 0 and refused == 0 and clean,
        "result": f"{answered} answered, {dropped} dropped (written, never answered), {refused} refused; "
        f"the balancer saw /readyz 503 while it drained; exited after {stopped:.1f} s "
        f"({'by SIGTERM, as uvicorn does' if proc.returncode == -signal.SIGTERM else f'code {proc.returncode}'})",
    }


def _workers(master: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing spawns; not its resource tracker)."""
    return [p for p in _children(master) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def worker_kill_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    server = _service(bundle, redis_url, workers=2)
    sc = Scenarios(bundle)
    bodies = [sc.keystroke_miss(i) for i in range(500)]
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 30
        while len(_workers(server.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _workers(server.proc.pid)
        came_back: list[float] = []

        async def run() -> list:
            task = asyncio.create_task(_keepalive_loop(server.url, bodies, 4, stop))
            await asyncio.sleep(1.5)
            os.kill(workers[0], signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() - killed < 20:
                alive = [p for p in _workers(server.proc.pid) if p != workers[0]]
                if len(alive) >= 2:
                    came_back.append(time.monotonic() - killed)
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            stop.set()
            return await task

        outcomes = asyncio.run(run())
        failures = [f"{o} {s}" if s else o for o, s, _ in outcomes if o != "ok" or s != 200]
        failed = len(failures)
        kinds = {kind: failures.count(kind) for kind in sorted(set(failures))}
        back = f"back after {came_back[0]:.1f} s" if came_back else "not back within 20 s"
        return {
            "case": "a worker SIGKILLed under load (2 workers)",
            "requests": len(outcomes),
            "failed": failed,
            "failures": kinds,
            "worker_back_after_s": round(came_back[0], 1) if came_back else None,
            "held": bool(came_back) and failed <= 8,
            "result": f"{failed} of {len(outcomes)} requests failed (those in flight on it); a new worker {back}",
        }
    finally:
        stop.set()
        server.stop()


def bundle_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    copy = work / "bundle-under-fire"
    shutil.copytree(bundle, copy)
    server = _service(copy, redis_url)
    body = {"task": "prequery", "country": "US", "candidates": [f"e{i:06d}" for i in range(1, 101)], "k": 10}
    try:
        before = server.client.post("/rank", json=body).json()["items"]
        (copy / "model.onnx").write_bytes(b"\0" * 100)
        for table in (copy / "tables").iterdir():
            table.unlink()
        corrupted = [server.client.post("/rank", json=body) for _ in range(20)]
        shutil.rmtree(copy)
        removed = [server.client.post("/rank", json=body) for _ in range(20)]
        answers = corrupted + removed
        same = all(r.status_code == 200 and r.json()["items"] == before for r in answers)
        ready = server.client.get("/readyz").status_code == 200
        return {
            "case": "the bundle directory corrupted, then removed, under a running service",
            "answers": len(answers),
            "all_200_and_unchanged": same,
            "still_ready": ready,
            "held": same and ready,
            "result": f"{sum(r.status_code == 200 for r in answers)} of {len(answers)} answered, "
            f"{'all' if same else 'not all'} identical to before; /readyz {'ready' if ready else 'not ready'}",
        }
    finally:
        server.stop()


CASES = [
    schemathesis_case,
    hostile_case,
    redis_kill_case,
    redis_hang_case,
    overload_case,
    sigterm_case,
    worker_kill_case,
    bundle_case,
]


def run_chaos(
    bundle: Path, quick: bool = False, out_dir: Path = Path("results"), only: list[str] | None = None, log=print
) -> dict:
    from loadtest.bench import machine

    work = Path(tempfile.mkdtemp(prefix="unirank-chaos-"))
    shared = RedisServer()
    rows = []
    try:
        for case in CASES:
            if only and case.__name__.removesuffix("_case") not in only:
                continue
            log(f"chaos: {case.__name__.removesuffix('_case')}")
            started = time.perf_counter()
            try:
                row = case(bundle, shared.url, quick, work)
            except Exception as exc:  # a case that cannot run is a failed case, reported as such
                row = {"case": case.__name__, "held": False, "result": f"could not run: {type(exc).__name__}: {exc}"}
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            log(f"  {'held' if row['held'] else 'FAILED'}: {row['result']}")
    finally:
        shared.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": machine(),
        "mode": "quick" if quick else "full",
        "cases": rows,
        "held": all(r["held"] for r in rows),
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / f"chaos-{stamp}.json", "markdown": out_dir / f"chaos-{stamp}.md"}
    files["json"].write_text(json.dumps(result, indent=2))
    files["markdown"].write_text(format_table(result))
    result["files"] = {k: str(v) for k, v in files.items()}
    return result


def format_table(result: dict) -> str:
    lines = [
        f"Fault suite ({result['mode']}), {result['machine']['cpu']}",
        "",
        markdown_table(
            ("#", "what we tested", "what held", "result"),
            [
                (i, row["case"], "yes" if row["held"] else "**no**", row["result"])
                for i, row in enumerate(result["cases"], 1)
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
