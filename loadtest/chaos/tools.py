"""What the fault cases share: a service to break (`service`), a Redis that can be killed and restarted
(`DurableRedis`), raw HTTP that tells refused, dropped and answered apart (`Connection`), closed- and
open-loop load over persistent connections, and the numbers they report."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from loadtest.processes import AppServer
from service.store.redis_server import free_port, redis_server_binary

TOKEN = "chaos-admin-token"
JSON_TYPE = {"content-type": "application/json"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def start_service(bundle: Path, redis_url: str, extra: dict | None = None, workers: int = 1) -> AppServer:
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


ERROR_TYPES: dict[tuple[int, str], int] = {}  # (status, error type) of every 5xx answer this process saw


class Connection:
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


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split(":")
    return host, int(port)


async def keepalive_loop(
    url: str, bodies: list[bytes], concurrency: int, stop, routable=lambda: True
) -> list[tuple[str, int, float]]:
    """A closed loop over persistent connections; `routable()` false (a balancer that saw /readyz fail)
    stops new requests, as a balancer takes a draining backend out."""
    host, port = host_port(url)
    out: list[tuple[str, int, float]] = []

    async def user(n: int) -> None:
        i, conn = n, Connection(host, port)
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


async def open_loop_pool(
    url: str, bodies: list[bytes], rate: float, duration: float, connections: int
) -> tuple[list[tuple[str, int, float]], float]:
    """Open-loop arrivals at `rate` per second whatever the answers (an overload does not slow its clients
    down), sent over a pool of `connections` persistent connections like a load balancer's; an arrival that
    finds every connection busy waits for one, and its latency counts from its scheduled arrival, so the
    client's own queue is not hidden (no coordinated omission); the pool is opened (one GET /healthz on
    each connection) before the clock starts. Returns (outcome, status, seconds from the scheduled
    arrival, seconds from the moment it was written) per request, and the rate sent."""
    host, port = host_port(url)
    queue: asyncio.Queue = asyncio.Queue()
    out: list[tuple[str, int, float, float]] = []
    pool = [Connection(host, port) for _ in range(connections)]
    await asyncio.gather(*(conn.request("/healthz", None) for conn in pool))

    async def sender(conn: Connection) -> None:
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


async def post_events(client: httpx.AsyncClient, batch: list[dict]) -> int:
    """POST /events; the status, or 0 when no answer came."""
    try:
        return (await client.post("/events", json=batch)).status_code
    except httpx.HTTPError:
        return 0


def p99(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values) * 1000, 99)) if values else float("nan")


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


def overload(server: AppServer, bodies: list[bytes], rate: float, duration: float) -> dict:
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
    outcomes, _ = asyncio.run(open_loop_pool(server.url, bodies, rate, duration, connections=256))
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
        "admitted_p99_ms": round(p99(admitted), 1),
        "rejected_p50_ms": round(float(np.percentile(rejected, 50)) * 1000, 1) if rejected else None,
        "rejected_p99_ms": round(p99(rejected), 1),
        "healthz_p99_ms": round(p99(health), 1),
        # from the scheduled arrival: what the arrivals waited for a free connection of the pool too
        "p99_from_arrival_ms": round(p99([due for _, _, due, _ in outcomes]), 1),
        "other_failures": sum(1 for _, s, _, _ in outcomes if s not in (200, 503)),
    }


def workers_of(master: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing spawns; not its resource tracker)."""
    return [p for p in children(master) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
