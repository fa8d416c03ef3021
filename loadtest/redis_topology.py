"""What a Redis Cluster costs the service, against one Redis: the same scenarios, the same pinned server.

Contract: for each topology (`single`: one redis-server; `cluster`: a three-master Redis Cluster on
loopback ports), one service process pinned to the first core, Redis and the bench's load generator on
the second (as `unirank bench` places them), each scenario driven for `--duration` seconds at
concurrency 8 after a warm-up: keystroke_hit (cache hits), keystroke_miss (every request a new query:
a cache read and write), rank_200 (`full`: the user's history read from Redis) and events (batches of
100 through POST /events: the per-slot script calls of a cluster against one script call). On one
machine this measures the client-side cost of the cluster path, not the capacity a cluster adds (its
masters would be other machines). Writes results/redis-topology-<timestamp>.{json,md,png}.

    python -m loadtest.redis_topology --bundle artifacts/demo
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from loadtest.bench import _cpus, _drive, _write, machine
from loadtest.processes import AppServer, RedisClusterServer, RedisServer
from loadtest.report import figure, save_results
from loadtest.scenarios import Scenarios
from unirank.core.markdown import markdown_table

SCENARIOS = ("keystroke_hit", "keystroke_miss", "rank_200", "events")


def run(bundle: Path, duration: float, warmup: float) -> dict:
    server_cpus, load_cpus = _cpus()
    sc = Scenarios(bundle)
    work = Path(tempfile.mkdtemp(prefix="unirank-topology-"))
    files = {
        "keystroke_hit": ("/rank", _write(work / "hit.jsonl", [sc.keystroke_hit() for _ in range(200)])),
        "keystroke_miss": ("/rank", _write(work / "miss.jsonl", [sc.keystroke_miss(i) for i in range(100_000)])),
        "rank_200": ("/rank", _write(work / "rank200.jsonl", [sc.rank_200() for _ in range(500)])),
        "events": ("/events", _write(work / "events.jsonl", [sc.events_100() for _ in range(200)])),
    }
    rows = []
    for topology in ("single", "cluster"):
        redis = RedisClusterServer(cpus=load_cpus) if topology == "cluster" else RedisServer(cpus=load_cpus)
        service = AppServer(
            "service.api:create_app", {"UNIRANK_BUNDLE": str(bundle), "REDIS_URL": redis.url}, server_cpus
        )
        try:
            service.wait_ready()
            for name in SCENARIOS:
                path, bodies = files[name]
                print(f"redis-topology: {topology}, {name} ({duration:.0f}s)", flush=True)
                result = _drive(service.url, path, bodies, 8, duration, warmup, load_cpus)
                if name == "events":
                    result["events_per_s"] = result["rps"] * 100
                rows.append({"topology": topology, "scenario": name} | result)
        finally:
            service.stop()
            redis.stop()
    by = {(r["topology"], r["scenario"]): r for r in rows}
    ratios = {name: by[("cluster", name)]["rps"] / by[("single", name)]["rps"] for name in SCENARIOS}
    return {"machine": machine(), "bundle": str(bundle), "rows": rows, "ratios": {"cluster_vs_single": ratios}}


def table(r: dict) -> str:
    headers = ("topology", "scenario", "req/s", "p50 ms", "p99 ms", "errors", "cluster / single (req/s)")
    rows = []
    for row in r["rows"]:
        ratio = r["ratios"]["cluster_vs_single"][row["scenario"]] if row["topology"] == "cluster" else None
        rows.append(
            (
                row["topology"],
                row["scenario"],
                f"{row['rps']:.0f}",
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                row["errors"],
                "" if ratio is None else f"{ratio:.2f}",
            )
        )
    return markdown_table(headers, rows) + "\n"


def plot(r: dict, path: Path) -> None:
    with figure(path, size=(8, 4), dpi=110) as (fig, ax):
        width = 0.38
        for i, topology in enumerate(("single", "cluster")):
            rps = [
                next(x["rps"] for x in r["rows"] if x["topology"] == topology and x["scenario"] == s) for s in SCENARIOS
            ]
            ax.bar([j + (i - 0.5) * width for j in range(len(SCENARIOS))], rps, width, label=topology)
        ax.set_xticks(range(len(SCENARIOS)), SCENARIOS)
        ax.set_ylabel("requests/s (one server core)")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title(f"unirank: one Redis vs a three-master Redis Cluster — {r['machine']['cpu']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    result = run(args.bundle, args.duration, args.warmup)
    result = save_results(result, args.out, "redis-topology", table(result), plot)
    print(table(result))
    print("written: " + ", ".join(result["files"].values()))


if __name__ == "__main__":
    main()
