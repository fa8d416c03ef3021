"""Throughput of rank_200 and keystroke_hit with 1, 2, ... uvicorn workers of one replica (what
`unirank serve --workers N` runs), on this machine or a lent GPU machine.

Contract: for each worker count, one service (all cores, not pinned: the workers share them as they
would in production), its own Redis, and the bench's load generator driving each scenario for
`--duration` seconds at `--concurrency` (default 8 per worker) after a warm-up. The load generator and
Redis run on the same machine and compete for its cores: on a small machine the numbers are a floor.
Writes results/workers-<timestamp>.json, a markdown table and a PNG (req/s and p99 vs workers).

    python -m loadtest.worker_scaling --bundle artifacts/demo --workers 1 2
    python -m loadtest.worker_scaling --bundle artifacts/demo --workers 1 2 4 8 16   # a 16-core GPU machine
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from loadtest.bench import _drive, _write, machine
from loadtest.processes import AppServer, RedisServer
from loadtest.report import figure, save_results
from loadtest.scenarios import Scenarios
from unirank.core.markdown import markdown_table


def run(bundle: Path, workers: list[int], duration: float, warmup: float, per_worker: int) -> dict:
    sc = Scenarios(bundle)
    work = Path(tempfile.mkdtemp(prefix="unirank-workers-"))
    files = {
        "rank_200": _write(work / "rank200.jsonl", [sc.rank_200() for _ in range(500)]),
        "keystroke_hit": _write(work / "hit.jsonl", [sc.keystroke_hit() for _ in range(200)]),
    }
    rows = []
    for n in workers:
        redis = RedisServer()
        env = {
            "UNIRANK_BUNDLE": str(bundle),
            "REDIS_URL": redis.url,
            "UNIRANK_WORKERS": str(n),
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="unirank-workers-prom-"),
        }
        service = AppServer("service.api:create_app", env, workers=n)
        try:
            service.wait_ready()
            for name, bodies in files.items():
                concurrency = per_worker * n
                print(f"workers: {n} worker(s), {name} at concurrency {concurrency}", flush=True)
                result = _drive(service.url, "/rank", bodies, concurrency, duration, warmup, None)
                rows.append({"workers": n, "scenario": name} | result)
        finally:
            service.stop()
            redis.stop()
    return {"machine": machine() | {"cores": os.cpu_count()}, "bundle": str(bundle), "rows": rows}


def table(r: dict) -> str:
    headers = ("workers", "scenario", "concurrency", "req/s", "p50 ms", "p99 ms", "errors")
    rows = [
        (
            x["workers"],
            x["scenario"],
            x["concurrency"],
            f"{x['rps']:.0f}",
            f"{x['p50_ms']:.2f}",
            f"{x['p99_ms']:.2f}",
            x["errors"],
        )
        for x in r["rows"]
    ]
    return markdown_table(headers, rows) + "\n"


def plot(r: dict, path: Path) -> None:
    with figure(path, 2, size=(11, 4), dpi=110) as (fig, axes):
        for name in sorted({row["scenario"] for row in r["rows"]}):
            rows = [row for row in r["rows"] if row["scenario"] == name]
            axes[0].plot([x["workers"] for x in rows], [x["rps"] for x in rows], "o-", label=name)
            axes[1].plot([x["workers"] for x in rows], [x["p99_ms"] for x in rows], "s--", label=name)
        axes[0].set_ylabel("requests/s")
        axes[1].set_ylabel("p99 (ms)")
        for ax in axes:
            ax.set_xlabel("uvicorn workers")
            ax.legend()
        fig.suptitle(f"unirank worker scaling — {r['machine']['cpu']} ({r['machine']['cores']} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency-per-worker", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    result = run(args.bundle, args.workers, args.duration, args.warmup, args.concurrency_per_worker)
    result = save_results(result, args.out, "workers", table(result), plot)
    print(table(result))
    print("written: " + ", ".join(result["files"].values()))


if __name__ == "__main__":
    main()
