"""`unirank bench`: one run that starts a real Redis, the service and the naive reference, drives each
scenario at fixed concurrency with the load generator in its own process, and writes
results/bench-<timestamp>.json, a markdown table and a PNG plot.

On a machine with two or more cores, the servers are pinned to core 0 and the load generator to core 1,
so the figures are "one server core" whatever else the machine holds.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest.processes import ROOT, AppServer, RedisServer
from loadtest.scenarios import Scenarios
from model_export.text_features import TEXT_DIM

TARGETS = {
    "keystroke_hit_vs_ceiling": 0.6,
    "keystroke_hit_p99_ms": 5.0,
    "rank_200_vs_naive_200": 5.0,
    "rank_200_p99_ms": 15.0,
    "events_per_s": 10_000,
}


def _cpus() -> tuple[set[int] | None, set[int] | None]:
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, {cores[1]}) if len(cores) >= 2 else (None, None)


def _write(path: Path, bodies: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


def _drive(url: str, path: str, bodies: Path, concurrency: int, duration: float, warmup: float, cpus) -> dict:
    out = bodies.with_suffix(f".c{concurrency}.result.json")
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    subprocess.run(
        [sys.executable, "-m", "loadtest.loadgen", url, path, str(bodies), "--concurrency", str(concurrency),
         "--duration", str(duration), "--warmup", str(warmup), "--out", str(out)],
        cwd=ROOT, check=True, preexec_fn=preexec,
    )  # fmt: skip
    return json.loads(out.read_text())


def model_width(spec: dict, n_dense: int) -> int:
    """Width of the per-candidate vector (model_export.model.feature_groups, from the manifest's spec)."""
    optional = bool(spec.get("history_encoder")) + bool(spec.get("text_features"))
    return spec["ctx_dim"] + spec["dim"] * (2 if spec["interaction"] else 1) + 8 + 16 + n_dense + spec["dim"] * optional


def flops_per_candidate(spec: dict, n_dense: int) -> int:
    """2 x multiply-adds of the per-candidate part of the model: cross layers, the MLP and head (or the
    MMoE experts, gates and heads), the play head, the history attention and the text projection."""
    width, rank, dim = model_width(spec, n_dense), spec["cross_rank"], spec["dim"]
    per_cross = 2 * (2 * width * rank) if 0 < rank < width // 2 else 2 * width * width
    experts = spec.get("mmoe_experts", 0)
    if experts:
        tower = 2 * (2 * width * spec.get("expert_hidden", 32) * experts + width * experts * 4 + width * 4)  # 4 tasks
    else:
        tower = spec["mlp_blocks"] * 2 * (2 * width * spec["hidden"]) + 2 * width
    play = 2 * width if spec.get("play_head") else 0
    history = 2 * (dim * dim + 2 * spec.get("history_length", 20) * dim) if spec.get("history_encoder") else 0
    text = 2 * (TEXT_DIM + 2 if spec.get("text_vector", True) else 2) * dim if spec.get("text_features") else 0
    return spec["cross_layers"] * per_cross + tower + play + history + text


def numpy_matmul_flops(width: int, rows: int = 200, seconds: float = 1.0) -> float:
    """FLOP/s of a plain single-threaded numpy matmul of the model's shape, on this core."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, width), dtype=np.float32)
    w = rng.standard_normal((width, width), dtype=np.float32)
    with threadpool_limits(1):
        for _ in range(20):
            a @ w
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ w
            n += 1
        took = time.perf_counter() - started
    return 2.0 * rows * width * width * n / took


def machine() -> dict:
    import onnxruntime

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def run_bench(bundle: Path, quick: bool = False, out_dir: Path = Path("results")) -> dict:
    duration, warmup = (6.0, 1.5) if quick else (15.0, 3.0)
    server_cpus, load_cpus = _cpus()
    manifest = json.loads((bundle / "manifest.json").read_text())
    sc = Scenarios(bundle)
    work = Path(tempfile.mkdtemp(prefix="unirank-bench-"))
    files = {
        "hit": _write(work / "hit.jsonl", [sc.keystroke_hit() for _ in range(200)]),
        "miss": _write(work / "miss.jsonl", [sc.keystroke_miss(i) for i in range(60_000 if quick else 150_000)]),
        "rank_200": _write(work / "rank200.jsonl", [sc.rank_200() for _ in range(500)]),
        "events": _write(work / "events.jsonl", [sc.events_100() for _ in range(200)]),
    }
    redis = RedisServer()
    service = AppServer("service.api:create_app", {"UNIRANK_BUNDLE": str(bundle), "REDIS_URL": redis.url,
                                                   "UNIRANK_BENCH_ENDPOINTS": "1"}, server_cpus)  # fmt: skip
    naive = AppServer("loadtest.naive_server:create_app", {"UNIRANK_BUNDLE": str(bundle)}, server_cpus)
    scenarios: dict[str, dict] = {}
    sweep: list[dict] = []
    try:
        service.wait_ready()
        naive.wait_ready()
        plan = [
            ("ceiling", service.url, "/bench/noop", files["hit"]),
            ("keystroke_hit", service.url, "/rank", files["hit"]),
            ("keystroke_miss", service.url, "/rank", files["miss"]),
            ("rank_200", service.url, "/rank", files["rank_200"]),
            ("naive_200", naive.url, "/rank", files["rank_200"]),
            ("events", service.url, "/events", files["events"]),
        ]
        for name, url, path, bodies in plan:
            print(f"bench: {name} (concurrency 8, {duration:.0f}s)", flush=True)
            scenarios[name] = _drive(url, path, bodies, 8, duration, warmup, load_cpus)
        scenarios["events"]["events_per_s"] = scenarios["events"]["rps"] * 100
        if not quick:
            for c in (1, 2, 4, 8, 16, 32):
                print(f"bench: rank_200 at concurrency {c}", flush=True)
                sweep.append(_drive(service.url, "/rank", files["rank_200"], c, duration / 2, 1.0, load_cpus))
    finally:
        service.stop()
        naive.stop()
        redis.stop()
    spec = manifest["model"]
    n_dense = len(manifest["features"]["dense"])
    achieved = scenarios["rank_200"]["rps"] * 200 * flops_per_candidate(spec, n_dense)
    numpy_flops = numpy_matmul_flops(model_width(spec, n_dense))
    result = {
        "machine": machine() | {"server_cpus": sorted(server_cpus or []), "loadgen_cpus": sorted(load_cpus or [])},
        "bundle": {"version": manifest["version"], "personalization": manifest["personalization"]},
        "mode": "quick" if quick else "full",
        "scenarios": scenarios,
        "ratios": {
            "keystroke_hit_vs_ceiling": scenarios["keystroke_hit"]["rps"] / scenarios["ceiling"]["rps"],
            "rank_200_vs_naive_200": scenarios["rank_200"]["rps"] / max(scenarios["naive_200"]["rps"], 1e-9),
        },
        "scoring_efficiency": achieved / numpy_flops,
        "scoring": {"flops_per_candidate": flops_per_candidate(spec, n_dense), "achieved_flops": achieved,
                    "numpy_matmul_flops": numpy_flops},  # fmt: skip
        "rank_200_vs_concurrency": sweep,
    }
    result["targets"] = check_targets(result)
    return save_results(result, out_dir, "bench", format_table(result), plot)


def save_results(result: dict, out_dir: Path, name: str, table: str, plot_to) -> dict:
    """<name>-<timestamp>.json, .md (the table) and .png (plot_to(result, path)); their paths go in result["files"]."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / f"{name}-{stamp}.json", "markdown": out_dir / f"{name}-{stamp}.md", "plot": out_dir / f"{name}-{stamp}.png"}
    files["json"].write_text(json.dumps(result, indent=2))
    files["markdown"].write_text(table)
    plot_to(result, files["plot"])
    result["files"] = {k: str(v) for k, v in files.items()}
    return result


SCENARIOS = ("ceiling", "keystroke_hit", "keystroke_miss", "rank_200", "naive_200", "events")
SCENARIO_FIELDS = ("rps", "p50_ms", "p95_ms", "p99_ms", "errors", "concurrency")


def completeness_problems(r: dict) -> list[str]:
    """What a CI smoke run checks: every scenario and ratio present, traffic flowed, zero errors."""
    problems = [f"missing key {k}" for k in ("machine", "scenarios", "ratios", "scoring_efficiency") if k not in r]
    for name in SCENARIOS:
        s = r.get("scenarios", {}).get(name)
        if s is None:
            problems.append(f"missing scenario {name}")
            continue
        problems += [f"{name}: missing {f}" for f in SCENARIO_FIELDS if f not in s]
        if s.get("errors", 1) != 0:
            problems.append(f"{name}: {s.get('errors')} errors")
        if not s.get("rps", 0) > 0:
            problems.append(f"{name}: no successful requests")
    problems += [f"missing ratio {k}" for k in ("keystroke_hit_vs_ceiling", "rank_200_vs_naive_200") if k not in r.get("ratios", {})]
    return problems


def check_targets(r: dict) -> dict:
    s = r["scenarios"]
    return {
        "keystroke_hit_vs_ceiling >= 0.6": r["ratios"]["keystroke_hit_vs_ceiling"] >= TARGETS["keystroke_hit_vs_ceiling"],
        "keystroke_hit p99 <= 5 ms": s["keystroke_hit"]["p99_ms"] <= TARGETS["keystroke_hit_p99_ms"],
        "rank_200_vs_naive_200 >= 5": r["ratios"]["rank_200_vs_naive_200"] >= TARGETS["rank_200_vs_naive_200"],
        "rank_200 p99 <= 15 ms": s["rank_200"]["p99_ms"] <= TARGETS["rank_200_p99_ms"],
        "events >= 10000/s": s["events"]["events_per_s"] >= TARGETS["events_per_s"],
        "zero errors": all(v["errors"] == 0 for v in s.values()),
    }


def format_table(r: dict) -> str:
    lines = ["| scenario | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for name, s in r["scenarios"].items():
        lines.append(f"| {name} | {s['concurrency']} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | {s['errors']} |")
    lines += ["", f"- keystroke_hit / ceiling: {r['ratios']['keystroke_hit_vs_ceiling']:.2f}",
              f"- rank_200 / naive_200: {r['ratios']['rank_200_vs_naive_200']:.1f}x",
              f"- events acknowledged: {r['scenarios']['events']['events_per_s']:.0f}/s",
              f"- scoring efficiency (model FLOP/s in /rank over numpy matmul FLOP/s, one core): {r['scoring_efficiency']:.3f}"]  # fmt: skip
    if r["rank_200_vs_concurrency"]:
        lines += ["", "| rank_200 concurrency | req/s | p50 ms | p99 ms |", "|---|---|---|---|"]
        lines += [f"| {s['concurrency']} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} |" for s in r["rank_200_vs_concurrency"]]
    lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["targets"].items())]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(r["scenarios"])
    x = np.arange(len(names))
    for i, p in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        axes[0].bar(x + (i - 1) * 0.27, [r["scenarios"][n][p] for n in names], 0.27, label=p.replace("_ms", ""))
    axes[0].set_xticks(x, names, rotation=20)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("latency (ms, log scale)")
    axes[0].set_title("Latency per scenario (concurrency 8)")
    axes[0].legend()
    sweep = r["rank_200_vs_concurrency"] or [r["scenarios"]["rank_200"]]
    cs = [s["concurrency"] for s in sweep]
    axes[1].plot(cs, [s["rps"] for s in sweep], "o-", label="rank_200 req/s")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("concurrency")
    axes[1].set_ylabel("requests/s")
    twin = axes[1].twinx()
    twin.plot(cs, [s["p99_ms"] for s in sweep], "s--", color="tab:red", label="p99 ms")
    twin.set_ylabel("p99 (ms)")
    axes[1].set_title("rank_200: throughput and p99 vs concurrency")
    fig.suptitle(f"unirank bench ({r['mode']}) — {r['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
