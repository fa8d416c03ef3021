"""CPU time the service spends per request of one scenario under load, and optionally where it goes.

Contract: starts Redis and the service as the bench does (the service pinned to the first core, the load
generator and Redis on the second), drives one POST scenario of the bench (`rank_200`, `keystroke_hit`,
`keystroke_miss`, or `ceiling`: the no-op endpoint) at concurrency 8, and reports the throughput, the p99
and the service process's CPU seconds (user + system, psutil) per request answered — a figure that moves
far less than req/s between runs on a shared machine — and the time the service's garbage collections
took (its `unirank_gc_pause_seconds`) and how many requests shared an inference call on average (its
`unirank_batch_requests`). `--runs N` repeats the measurement on the same server; `--py-spy
OUT` then records a py-spy profile (raw stacks) while the load runs again (py-spy must be installed).
Prints a table; `--out` also writes JSON.

    python -m loadtest.server_cpu --bundle artifacts/demo --scenario rank_200 --runs 3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from loadtest.bench import _cpus, _drive, _write
from loadtest.processes import AppServer, RedisServer
from loadtest.scenarios import Scenarios
from unirank.core.markdown import markdown_table

SCENARIOS = ("rank_200", "keystroke_hit", "keystroke_miss", "ceiling")


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


_GC = re.compile(r'^unirank_gc_pause_seconds_(sum|count)\{generation="(\d)"\} (\S+)$', re.M)


_BATCHES = re.compile(r"^unirank_batch_requests_(sum|count) (\S+)$", re.M)


def _batches(url: str) -> dict[str, float]:
    """Inference calls so far and the requests they scored: {"sum": requests, "count": calls}."""
    return {kind: float(value) for kind, value in _BATCHES.findall(httpx.get(f"{url}/metrics", timeout=10).text)}


def _gc_pauses(url: str) -> dict[str, float]:
    """The service's garbage collections so far, from /metrics: {"count_2": collections, "sum_2": seconds, ...}
    (empty for a service without `unirank_gc_pause_seconds`). The worker publishes them once a second."""
    time.sleep(1.2)
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {f"{kind}_{gen}": float(value) for kind, gen, value in _GC.findall(text)}


def measure(bundle: Path, scenario: str, runs: int, seconds: float, py_spy: Path | None = None) -> dict:
    server_cpus, load_cpus = _cpus()
    sc = Scenarios(bundle)
    work = Path(tempfile.mkdtemp(prefix="unirank-server-cpu-"))
    if scenario == "keystroke_miss":
        make = sc.keystroke_miss
    else:  # the ceiling posts the keystroke bodies to the no-op endpoint, as the bench does
        make = lambda i: getattr(sc, "keystroke_hit" if scenario == "ceiling" else scenario)()  # noqa: E731
    n = 60_000 if scenario == "keystroke_miss" else 500
    drives = iter(range(runs + 2))

    def bodies() -> Path:
        """The next drive's bodies: for keystroke_miss, keys no earlier drive used (the loader starts each
        drive at the first line, so one file would make every drive after the first one of cache hits)."""
        d = next(drives) if scenario == "keystroke_miss" else 0
        path = work / f"{scenario}.{d}.jsonl"
        return path if path.exists() else _write(path, [make(d * n + i) for i in range(n)])

    path = "/bench/noop" if scenario == "ceiling" else "/rank"
    redis = RedisServer(cpus=load_cpus)
    env = {"UNIRANK_BUNDLE": str(bundle), "REDIS_URL": redis.url, "UNIRANK_BENCH_ENDPOINTS": "1"}
    service = AppServer("service.api:create_app", env, server_cpus)
    result: dict = {"scenario": scenario, "concurrency": 8, "seconds": seconds, "runs": []}
    try:
        service.wait_ready()
        proc = psutil.Process(service.proc.pid)
        _drive(service.url, path, bodies(), 8, 2.0, 1.0, load_cpus)  # warm: caches, allocator, JIT-free paths
        for _ in range(runs):
            gc_before = _gc_pauses(service.url)
            batches_before = _batches(service.url)
            before = _cpu_seconds(proc)
            run = _drive(service.url, path, bodies(), 8, seconds, 0.0, load_cpus)
            cpu = _cpu_seconds(proc) - before
            gc_after = _gc_pauses(service.url)
            batches = {k: v - batches_before.get(k, 0.0) for k, v in _batches(service.url).items()}
            gc_ms = sum(gc_after[k] - gc_before.get(k, 0.0) for k in gc_after if k.startswith("sum_")) * 1e3
            requests = max(run["requests"], 1)
            result["runs"].append(
                {
                    "rps": run["rps"],
                    "p99_ms": run["p99_ms"],
                    "errors": run["errors"],
                    "server_cpu_us_per_request": cpu / requests * 1e6,
                    "requests_per_inference_call": batches["sum"] / batches["count"] if batches.get("count") else None,
                    # None: the service does not publish its collections
                    "gc_ms_per_1000_requests": gc_ms / requests * 1000 if gc_after else None,
                    "full_collections": gc_after["count_2"] - gc_before.get("count_2", 0.0) if gc_after else None,
                    "full_collection_ms": (gc_after["sum_2"] - gc_before.get("sum_2", 0.0)) * 1e3 if gc_after else None,
                }
            )
        if py_spy is not None:
            spy = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv/bin/py-spy")
            cmd = [spy, "record", "-p", str(proc.pid), "-o", str(py_spy), "-f", "raw", "-d", str(int(seconds))]
            recorder = subprocess.Popen([*cmd, "-r", "200", "--nonblocking"])
            _drive(service.url, path, bodies(), 8, seconds + 2, 0.5, load_cpus)
            recorder.wait()
            result["py_spy"] = str(py_spy)
    finally:
        service.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


def _or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def table(result: dict) -> str:
    lines = [
        f"{result['scenario']}, concurrency {result['concurrency']}, {result['seconds']:.0f} s per run",
    ]
    headers = (
        "run",
        "req/s",
        "p99 ms",
        "errors",
        "server CPU µs per request",
        "GC ms per 1,000 requests",
        "full collections (ms)",
        "requests per inference call",
    )
    rows = []
    for i, r in enumerate(result["runs"], 1):
        gc = "n/a" if r["gc_ms_per_1000_requests"] is None else f"{r['gc_ms_per_1000_requests']:.1f}"
        full = (
            "n/a" if r["full_collections"] is None else f"{r['full_collections']:.0f} ({r['full_collection_ms']:.1f})"
        )
        cpu = f"{r['server_cpu_us_per_request']:.0f}"
        rows.append(
            (
                i,
                f"{r['rps']:.0f}",
                f"{r['p99_ms']:.1f}",
                r["errors"],
                cpu,
                gc,
                full,
                _or_na(r.get("requests_per_inference_call")),
            )
        )
    return "\n".join([*lines, "", markdown_table(headers, rows)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--scenario", choices=SCENARIOS, default="rank_200")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--py-spy", type=Path, help="Also record a py-spy profile (raw stacks) here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.bundle.resolve(), args.scenario, args.runs, args.seconds, args.py_spy)
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
