"""Faults in the service's own processes and files: SIGTERM under load, a worker SIGKILLed, the bundle
directory corrupted and removed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from loadtest.chaos.tools import keepalive_loop, start_service, workers_of
from loadtest.scenarios import Scenarios
from service.store.redis_server import free_port


def sigterm_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    """`unirank serve` (what the images run) under load over persistent connections, then SIGTERM."""
    proc, url = _start_serve(bundle, redis_url)
    sc = Scenarios(bundle)
    bodies = [sc.rank_200() for _ in range(50)]
    outcomes, stopped = asyncio.run(_terminate_under_load(proc, url, bodies, 2.0 if quick else 5.0))
    return _sigterm_report(outcomes, stopped, proc.returncode)


def _start_serve(bundle: Path, redis_url: str) -> tuple[subprocess.Popen, str]:
    """`unirank serve` on a free port, ready (its /readyz answered 200)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | {
        "REDIS_URL": redis_url,
        "UNIRANK_GRACEFUL_SHUTDOWN_S": "10",
        "UNIRANK_CONTROL_KEY": f"ur:control:chaos:{time.time_ns()}",
    }
    cmd = [sys.executable, "-m", "unirank.cli", "serve", "--bundle", str(bundle), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("unirank serve did not become ready")
        time.sleep(0.2)


async def _balancer(url: str, stop: threading.Event, in_rotation: list[bool]) -> None:
    """Polls /readyz as a load balancer's health check does (every 0.5 s) and takes the backend out of
    rotation on the first failure; the load goes through it only while it is in."""
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        while not stop.is_set() and in_rotation[0]:
            try:
                in_rotation[0] = (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                in_rotation[0] = False
            await asyncio.sleep(0.5)


async def _terminate_under_load(
    proc: subprocess.Popen, url: str, bodies: list[bytes], load_s: float
) -> tuple[list, float]:
    """8 persistent connections through the balancer; SIGTERM after `load_s`. Returns the outcomes and the
    seconds the process took to exit."""
    stop, in_rotation = threading.Event(), [True]
    task = asyncio.create_task(keepalive_loop(url, bodies, 8, stop, routable=lambda: in_rotation[0]))
    checks = asyncio.create_task(_balancer(url, stop, in_rotation))
    await asyncio.sleep(load_s)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await asyncio.to_thread(proc.wait, 60)
    stopped = time.monotonic() - signalled
    stop.set()
    await checks
    return await task, stopped


def _sigterm_report(outcomes: list, stopped: float, returncode: int) -> dict:
    dropped = sum(1 for o, _, _ in outcomes if o == "dropped")
    answered = sum(1 for o, s, _ in outcomes if o == "ok" and s == 200)
    refused = sum(1 for o, _, _ in outcomes if o == "refused")
    # uvicorn re-raises the signal it was stopped by once it has shut down: death by SIGTERM is the clean end
    clean = returncode in (0, -signal.SIGTERM)
    how = "by SIGTERM, as uvicorn does" if returncode == -signal.SIGTERM else f"code {returncode}"
    return {
        "case": "SIGTERM under load (unirank serve, persistent connections, a balancer polling /readyz)",
        "answered": answered,
        "dropped": dropped,
        "refused": refused,
        "exit_code": returncode,
        "seconds_to_exit": round(stopped, 1),
        "held": answered > 0 and dropped == 0 and refused == 0 and clean,
        "result": f"{answered} answered, {dropped} dropped (written, never answered), {refused} refused; "
        f"the balancer saw /readyz 503 while it drained; exited after {stopped:.1f} s ({how})",
    }


def worker_kill_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    server = start_service(bundle, redis_url, workers=2)
    sc = Scenarios(bundle)
    bodies = [sc.keystroke_miss(i) for i in range(500)]
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 30
        while len(workers_of(server.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = workers_of(server.proc.pid)
        came_back: list[float] = []

        async def run() -> list:
            task = asyncio.create_task(keepalive_loop(server.url, bodies, 4, stop))
            await asyncio.sleep(1.5)
            os.kill(workers[0], signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() - killed < 20:
                alive = [p for p in workers_of(server.proc.pid) if p != workers[0]]
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
    server = start_service(copy, redis_url)
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
