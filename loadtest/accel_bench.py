"""Execution providers and micro-batching, measured in one run on the machine at hand.

- scoring: candidates/s and latency of ONE onnxruntime call vs candidates per call, for the CPU EP (one
  thread, and every core) and, where available, the CUDA EP (plain `run`, and IO binding), on the same
  bundle and the same real request inputs;
- batching: end-to-end POST /rank (200 explicit candidates) throughput and latency against a live
  service with micro-batching on and off, at concurrency 1 to 64.

    unirank bench-scoring --bundle artifacts/demo      -> results/scoring-<ts>.{json,md,png}
    unirank bench-batching --bundle artifacts/demo     -> results/batching-<ts>.{json,md,png}
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from loadtest.bench import _drive, _write, machine
from loadtest.processes import AppServer, RedisServer
from loadtest.report import figure, save_results
from loadtest.scenarios import Scenarios
from service.core.schemas import RankRequest
from service.core.settings import Settings
from service.model.batching import concatenate
from service.model.bundle import LoadedBundle
from service.model.context import build_request_context
from service.model.scoring import Scorer
from unirank.core.markdown import markdown_table

SIZES = (1, 10, 100, 1_000, 10_000, 100_000)
CONCURRENCY = (1, 4, 16, 64)


def real_inputs(bundle: LoadedBundle, n: int, per_request: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """n candidates from ceil(n / per_request) real prequery requests of different users, as one call."""
    rng = np.random.default_rng(seed)
    users = bundle.tables.user_ids[1:]
    parts, left, i = [], n, 0
    while left > 0:
        req = RankRequest(task="prequery", country="US", user_id=users[i % len(users)])
        rc = build_request_context(req, bundle.tables, bundle.level)
        k = min(left, per_request)
        cand = rng.choice(np.arange(1, bundle.tables.n_entities + 1), k, replace=k > bundle.tables.n_entities)
        parts.append(bundle.features.inputs(rc, cand, bundle.features.history([], rc.user)))
        left, i = left - k, i + 1
    return concatenate(parts)[0]


def _time_calls(scorer: Scorer, inputs: dict, budget_s: float = 1.0, max_calls: int = 500) -> list[float]:
    for _ in range(3):
        scorer.score(inputs)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_calls and (len(times) < 5 or time.perf_counter() < deadline):
        started = time.perf_counter()
        scorer.score(inputs)
        times.append(time.perf_counter() - started)
    return times


def scoring_configs() -> list[dict]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    configs = [
        {"name": "cpu_1_thread", "provider": "cpu", "threads": 1, "io_binding": False},
        {"name": f"cpu_{cores}_threads", "provider": "cpu", "threads": cores, "io_binding": False},
    ]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        configs += [
            {"name": "cuda", "provider": "cuda", "threads": 1, "io_binding": False},
            {"name": "cuda_io_binding", "provider": "cuda", "threads": 1, "io_binding": True},
        ]
    return configs


def run_scoring(bundle_path: Path, sizes=SIZES, out_dir: Path = Path("results")) -> dict:
    bundle = LoadedBundle.load(bundle_path, Settings(micro_batch=False, execution_provider="cpu"))
    inputs = {n: real_inputs(bundle, n) for n in tqdm(sizes, desc="inputs")}
    rows = []
    for cfg in scoring_configs():
        scorer = Scorer(
            bundle.path / bundle.manifest["onnx"]["file"], cfg["provider"], cfg["threads"], cfg["io_binding"]
        )
        for n in tqdm(sizes, desc=cfg["name"]):
            times = np.asarray(_time_calls(scorer, inputs[n])) * 1000
            median = float(np.median(times))
            rows.append(
                {
                    "config": cfg["name"],
                    "provider": scorer.provider,
                    "candidates": n,
                    "calls": len(times),
                    "p50_ms": median,
                    "p99_ms": float(np.percentile(times, 99)),
                    "candidates_per_s": n / (median / 1000),
                }
            )
    by = {(r["config"], r["candidates"]): r for r in rows}
    ratios = {}
    for cfg in (c["name"] for c in scoring_configs() if c["provider"] == "cuda"):
        for base in (c["name"] for c in scoring_configs() if c["provider"] == "cpu"):
            ratios[f"{cfg}_vs_{base}"] = {
                n: by[(cfg, n)]["candidates_per_s"] / by[(base, n)]["candidates_per_s"] for n in sizes
            }
    result = {"machine": machine() | {"gpu": _gpu_name()}, "bundle": bundle.version, "rows": rows, "ratios": ratios}
    return _save(result, out_dir, "scoring", _scoring_table(result), _scoring_plot)


def run_batching(
    bundle_path: Path,
    provider: str = "auto",
    concurrency=CONCURRENCY,
    duration: float = 8.0,
    window_ms: float = 1.0,
    workers: int = 1,
    out_dir: Path = Path("results"),
) -> dict:
    sc = Scenarios(bundle_path)
    work = Path(tempfile.mkdtemp(prefix="unirank-batching-"))
    bodies = _write(work / "rank200.jsonl", [sc.rank_200() for _ in range(500)])
    redis = RedisServer()
    runs: dict[str, list[dict]] = {}
    provider_seen = {}
    try:
        for mode in ("off", "on"):
            env = {
                "UNIRANK_BUNDLE": str(bundle_path),
                "REDIS_URL": redis.url,
                "UNIRANK_EXECUTION_PROVIDER": provider,
                "UNIRANK_MICRO_BATCH": "true" if mode == "on" else "false",
                "UNIRANK_MICRO_BATCH_WINDOW_MS": str(window_ms),
                "UNIRANK_BENCH_ENDPOINTS": "1",
            }
            server = AppServer("service.api:create_app", env, workers=workers)
            try:
                server.wait_ready(120)
                provider_seen[mode] = server.client.get("/model").json()["execution_provider"]
                runs[mode] = []
                for c in tqdm(concurrency, desc=f"micro-batching {mode}"):
                    runs[mode].append(_drive(server.url, "/rank", bodies, c, duration, 2.0, None))
                runs[mode][-1]["model"] = server.client.get("/model").json()["micro_batching"]
                if mode == "off":  # what this server + load generator pair can do at all, at the top concurrency
                    ceiling = _drive(server.url, "/bench/noop", bodies, max(concurrency), duration, 2.0, None)
            finally:
                server.stop()
    finally:
        redis.stop()
    ratio = {
        r_on["concurrency"]: r_on["rps"] / max(r_off["rps"], 1e-9)
        for r_on, r_off in zip(runs["on"], runs["off"], strict=True)
    }
    result = {
        "machine": machine() | {"gpu": _gpu_name()},
        "provider": provider_seen,
        "window_ms": window_ms,
        "workers": workers,
        "ceiling": ceiling,
        "duration_s": duration,
        "runs": runs,
        "throughput_on_vs_off": ratio,
    }
    return _save(result, out_dir, "batching", _batching_table(result), _batching_plot)


def _gpu_name() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _save(result: dict, out_dir: Path, name: str, table: str, plot) -> dict:
    return save_results(result, out_dir, name, table, plot) | {"table": table}


def _scoring_table(r: dict) -> str:
    rows = [
        (x["config"], x["candidates"], f"{x['p50_ms']:.3f}", f"{x['p99_ms']:.3f}", f"{x['candidates_per_s']:,.0f}")
        for x in r["rows"]
    ]
    lines = [markdown_table(("config", "candidates/call", "p50 ms", "p99 ms", "candidates/s"), rows)]
    for name, by_n in r["ratios"].items():
        lines.append(f"\n{name}: " + ", ".join(f"{n}: {v:.1f}x" for n, v in by_n.items()))
    return "\n".join(lines) + "\n"


def _batching_table(r: dict) -> str:
    c = r["ceiling"]
    headers = ("concurrency", "off req/s", "off p50 ms", "off p99 ms", "on req/s", "on p50 ms", "on p99 ms", "on/off")
    rows = [
        (
            on["concurrency"],
            f"{off['rps']:.0f}",
            f"{off['p50_ms']:.2f}",
            f"{off['p99_ms']:.2f}",
            f"{on['rps']:.0f}",
            f"{on['p50_ms']:.2f}",
            f"{on['p99_ms']:.2f}",
            f"{on['rps'] / max(off['rps'], 1e-9):.2f}x",
        )
        for off, on in zip(r["runs"]["off"], r["runs"]["on"], strict=True)
    ]
    lines = [
        f"provider: {r['provider']}, window {r['window_ms']} ms, {r['workers']} worker(s), "
        "rank_200 (200 explicit candidates)",
        f"ceiling (POST /bench/noop, same server and load generator, concurrency {c['concurrency']}): "
        f"{c['rps']:.0f} req/s",
        "",
        markdown_table(headers, rows),
    ]
    return "\n".join(lines) + "\n"


def _scoring_plot(r: dict, path: Path) -> None:
    with figure(path, size=(7, 4.5), dpi=120) as (fig, ax):
        for cfg in dict.fromkeys(x["config"] for x in r["rows"]):
            xs = [x for x in r["rows"] if x["config"] == cfg]
            ax.plot([x["candidates"] for x in xs], [x["candidates_per_s"] for x in xs], marker="o", label=cfg)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="candidates per call",
            ylabel="candidates / s",
            title=f"One onnxruntime call: {r['machine'].get('gpu') or 'CPU only'}",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()


def _batching_plot(r: dict, path: Path) -> None:
    with figure(path, 2, size=(10, 4), dpi=120) as (fig, axes):
        for mode in ("off", "on"):
            cs = [x["concurrency"] for x in r["runs"][mode]]
            axes[0].plot(cs, [x["rps"] for x in r["runs"][mode]], marker="o", label=f"micro-batching {mode}")
            axes[1].plot(cs, [x["p99_ms"] for x in r["runs"][mode]], marker="o", label=f"micro-batching {mode}")
        axes[0].set(xscale="log", xlabel="concurrency", ylabel="req/s", title="POST /rank, 200 candidates")
        axes[1].set(
            xscale="log",
            yscale="log",
            xlabel="concurrency",
            ylabel="p99 ms",
            title=f"provider {r['provider'].get('on')}",
        )
        for ax in axes:
            ax.grid(True, alpha=0.3)
            ax.legend()
