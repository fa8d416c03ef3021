"""What a bundle's model options cost at /rank: its latency against a baseline bundle, in one run.

Both bundles are served at once (one worker each, one shared Redis) and every request body goes to
both, in alternating order, one request at a time, so both see the same machine noise. Scenarios:
200 explicit candidates for a known user (`full`: the history encoder reads the user's history), a
keystroke cache miss (retrieval + scoring), and a more-like-this miss. Ratios are bundle / baseline.

    unirank bench-options --bundle artifacts/all-options --baseline artifacts/demo
        -> results/options-<ts>.{json,md,png}
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import orjson
from tqdm import tqdm

from loadtest.bench import machine
from loadtest.processes import AppServer, RedisServer
from loadtest.report import figure, save_results
from loadtest.scenarios import Scenarios
from unirank.core.markdown import markdown_table
from unirank.core.spec import ModelOptions, ModelSpec

TARGET_P99_RATIO = 1.5  # the options may cost at most this much of the baseline's /rank p99


def _bodies(sc: Scenarios, n: int) -> dict[str, list[bytes]]:
    t = sc.tables
    sources = sc.available[np.arange(n) % len(sc.available)]
    return {
        "candidates_200": [sc.rank_200() for _ in range(n)],
        "keystroke_miss": [sc.keystroke_miss(i + 5_000_000) for i in range(n)],
        "more_like_this_miss": [
            orjson.dumps(
                {
                    "task": "more_like_this",
                    "country": "US",
                    "source_entity_id": t.entity_ids[s],
                    "k": 1 + i // len(sc.available),
                    "personalization": "cluster",
                }
            )
            for i, s in enumerate(sources)
        ],
    }


def _summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def run_options(bundle: Path, baseline: Path, n: int = 2000, out_dir: Path = Path("results")) -> dict:
    manifests = {
        name: json.loads((p / "manifest.json").read_text()) for name, p in (("bundle", bundle), ("baseline", baseline))
    }
    sc = Scenarios(baseline)
    plans = _bodies(sc, n)
    redis = RedisServer()
    servers: dict[str, AppServer] = {}
    latency = {s: {"bundle": [], "baseline": []} for s in plans}
    server_side = {s: {"bundle": [], "baseline": []} for s in plans}
    try:
        for name, path in (("bundle", bundle), ("baseline", baseline)):
            servers[name] = AppServer(
                "service.api:create_app",
                {"UNIRANK_BUNDLE": str(path), "REDIS_URL": redis.url, "UNIRANK_LOCAL_CACHE_SIZE": "0"},
            )
        clients = {}
        for name, server in servers.items():
            server.wait_ready(120)
            clients[name] = httpx.Client(base_url=server.url, timeout=10, headers={"content-type": "application/json"})
        rng = np.random.default_rng(0)
        for scenario, bodies in plans.items():
            for body in bodies[:50]:  # warm-up
                for c in clients.values():
                    c.post("/rank", content=body)
            for body in tqdm(bodies, desc=scenario):  # misses stay misses: cache keys hold the model version
                for name in ("bundle", "baseline") if rng.random() < 0.5 else ("baseline", "bundle"):
                    started = time.perf_counter()
                    r = clients[name].post("/rank", content=body)
                    latency[scenario][name].append((time.perf_counter() - started) * 1000)
                    r.raise_for_status()
                    server_side[scenario][name].append(float(r.headers["server-timing"].rsplit("total;dur=", 1)[1]))
    finally:
        for s in servers.values():
            s.stop()
        redis.stop()
    scenarios = {}
    for s in plans:
        row = {
            name: _summary(latency[s][name]) | {"server": _summary(server_side[s][name])}
            for name in ("bundle", "baseline")
        }
        row["ratio"] = {k: row["bundle"][k] / row["baseline"][k] for k in ("p50_ms", "p99_ms")}
        row["server_ratio"] = {
            k: row["bundle"]["server"][k] / row["baseline"]["server"][k] for k in ("p50_ms", "p99_ms")
        }
        scenarios[s] = row
    result = {
        "machine": machine(),
        "bundle": {
            "path": str(bundle),
            "version": manifests["bundle"]["version"],
            "options": _options(manifests["bundle"]),
        },
        "baseline": {
            "path": str(baseline),
            "version": manifests["baseline"]["version"],
            "options": _options(manifests["baseline"]),
        },
        "n_per_scenario": n,
        "scenarios": scenarios,
        "target_p99_ratio": TARGET_P99_RATIO,
        "target_met": {s: r["ratio"]["p99_ms"] <= TARGET_P99_RATIO for s, r in scenarios.items()},
    }
    return save_results(result, out_dir, "options", format_table(result), plot)


def _options(manifest: dict) -> dict:
    """The bundle's model options that differ from the defaults."""
    options, default = asdict(ModelSpec.from_dict(manifest["model"]).options), asdict(ModelOptions())
    return {k: v for k, v in options.items() if v != default[k]}


def format_table(r: dict) -> str:
    on = [k for k, v in r["bundle"]["options"].items() if v] or ["none"]
    lines = [
        f"bundle: {r['bundle']['path']} (options: {', '.join(on)}); baseline: {r['baseline']['path']}; "
        f"{r['n_per_scenario']} requests per scenario and bundle, interleaved",
        "",
        markdown_table(
            (
                "scenario",
                "baseline p50 ms",
                "baseline p99 ms",
                "bundle p50 ms",
                "bundle p99 ms",
                "p50 ratio",
                "p99 ratio",
                "server p99 ratio",
            ),
            [
                (
                    s,
                    f"{row['baseline']['p50_ms']:.2f}",
                    f"{row['baseline']['p99_ms']:.2f}",
                    f"{row['bundle']['p50_ms']:.2f}",
                    f"{row['bundle']['p99_ms']:.2f}",
                    f"{row['ratio']['p50_ms']:.2f}x",
                    f"{row['ratio']['p99_ms']:.2f}x",
                    f"{row['server_ratio']['p99_ms']:.2f}x",
                )
                for s, row in r["scenarios"].items()
            ],
        ),
    ]
    met = ", ".join(f"{s}: {'met' if ok else 'missed'}" for s, ok in r["target_met"].items())
    return "\n".join(lines) + f"\n\ntarget p99 ratio <= {r['target_p99_ratio']}: {met}\n"


def plot(r: dict, path: Path) -> None:
    names = list(r["scenarios"])
    x = np.arange(len(names))
    with figure(path, size=(9.5, 4.5), dpi=120) as (fig, ax):
        for i, (who, stat) in enumerate(
            (("baseline", "p50_ms"), ("bundle", "p50_ms"), ("baseline", "p99_ms"), ("bundle", "p99_ms"))
        ):
            ax.bar(x + (i - 1.5) * 0.2, [r["scenarios"][s][who][stat] for s in names], 0.2, label=f"{who} {stat[:3]}")
        for j, s in enumerate(names):
            ax.text(
                j,
                max(r["scenarios"][s]["bundle"]["p99_ms"], r["scenarios"][s]["baseline"]["p99_ms"]) * 1.03,
                f"p99 {r['scenarios'][s]['ratio']['p99_ms']:.2f}x",
                ha="center",
            )
        ax.set_xticks(x, names)
        ax.set(ylabel="ms (client side, sequential)", title="POST /rank: bundle with model options vs baseline")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(True, axis="y", alpha=0.3)
