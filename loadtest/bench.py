"""`unirank bench`: one run that starts a real Redis, the service and the naive reference, drives each
scenario at fixed concurrency with the load generator in its own process, and writes
results/bench-<timestamp>.json, a markdown table and a PNG plot.

On a machine with two or more cores, the servers are pinned to core 0 and the load generator and Redis
to core 1, so the figures are "one server core" whatever else the machine holds.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.processes import ROOT, AppServer, RedisServer
from loadtest.report import figure, save_results
from loadtest.scenarios import Scenarios
from loadtest.typing import browser_cache_share, search_url, visits
from unirank.core.markdown import markdown_table
from unirank.core.spec import ModelSpec

ROLLOUT_EVERY_S = 2.0
TARGETS = {
    "log_on_vs_off": 1.1,
    "log_rps_loss": 0.03,
    "rollout_p99_vs_rank_200_p99": 1.5,
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


def _max_age(url: str) -> float:
    """The max-age the service puts on GET /search."""
    control = httpx.get(f"{url}{search_url('a')}", timeout=10).headers.get("cache-control", "")
    ages = [int(p.split("=")[1]) for p in control.replace(" ", "").split(",") if p.startswith("max-age=")]
    return float(ages[0]) if ages else 0.0


def _write(path: Path, bodies: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


def _drive(url: str, path: str, bodies: Path, concurrency: int, duration: float, warmup: float, cpus) -> dict:
    out = bodies.with_suffix(f".c{concurrency}.result.json")
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.loadgen",
            url,
            path,
            str(bodies),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        preexec_fn=preexec,
    )
    return json.loads(out.read_text())


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


BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # set on some machines; they slow a current numpy


def matmul_probe(width: int, cpus: set[int] | None) -> dict:
    """`numpy_matmul_flops` in its own process on the server's core, with the OpenBLAS overrides unset
    there (only there), and the BLAS kernels threadpoolctl reports."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    code = (
        "import json, sys; from threadpoolctl import threadpool_info; from loadtest.bench import numpy_matmul_flops; "
        f"print(json.dumps({{'flops': numpy_matmul_flops({int(width)}), 'blas': threadpool_info()}}))"
    )
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True, preexec_fn=preexec
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    probe["unset"] = [k for k in BLAS_ENV if k in os.environ]
    return probe


ONNXRUNTIME_REQUESTS_PER_CALL = 8  # the bench's concurrency: the most one call can hold, the cheapest per request


def onnxruntime_probe(bundle: Path, cpus: set[int] | None) -> dict:
    """`loadtest.rank_profile` in its own process on the server's core: the parts of one rank_200 request
    in isolation, and what onnxruntime costs per request when `ONNXRUNTIME_REQUESTS_PER_CALL` of them
    share a call (the service's environment: it, not numpy's BLAS, is what the service runs with)."""
    code = (
        "import json; from pathlib import Path; from loadtest.rank_profile import profile; "
        f"print(json.dumps(profile(Path({str(bundle)!r}), n=100, repeats=7)))"
    )
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True, preexec_fn=preexec
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def split_rank_200(rps: float, ceiling_s: float, model_at_matmul_rate_s: float, probe: dict) -> dict:
    """One rank_200 request's share of a run at `rps` on one core, in µs: the HTTP stack (the ceiling),
    the model at onnxruntime's speed (`probe`, from `onnxruntime_probe`) and the rest, the service's own
    work; with the model at the matmul rate for comparison."""
    onnxruntime_us = probe["onnxruntime_us_per_request_when_batched"][str(ONNXRUNTIME_REQUESTS_PER_CALL)]
    per_request_us = 1e6 / rps
    return {
        "per_request_us": per_request_us,
        "ceiling_us": ceiling_s * 1e6,
        "onnxruntime_us": onnxruntime_us,
        "service_us": per_request_us - ceiling_s * 1e6 - onnxruntime_us,
        "model_at_matmul_rate_us": model_at_matmul_rate_s * 1e6,
        "onnxruntime_requests_per_call": ONNXRUNTIME_REQUESTS_PER_CALL,
        "parts_in_isolation_us": probe["us"],
    }


def _candidates_scored(url: str, task: str) -> tuple[float, float]:
    """(sum, count) of the service's `unirank_candidates_count{task}` histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"unirank_candidates_{part}{{") and f'task="{task}"' in line:
                values[part] = float(line.rsplit(" ", 1)[1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def stage_profile(url: str, bodies: Path, n: int = 300) -> dict:
    """Mean milliseconds per stage of sequential requests, from their Server-Timing headers (parse, context,
    history, batch, features, inference, topk, encode, ...); `other` is what the header does not name (the
    HTTP/ASGI stack, routing, reading the body, the metrics)."""
    lines = [b for b in bodies.read_bytes().splitlines() if b.strip()]
    totals: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(n):
            r = client.post("/rank", content=lines[i % len(lines)], headers={"content-type": "application/json"})
            for part in r.headers.get("server-timing", "").split(","):
                name, _, dur = part.strip().partition(";dur=")
                if dur:
                    totals[name] = totals.get(name, 0.0) + float(dur)
    mean = {k: v / n for k, v in totals.items()}
    total = mean.pop("total", 0.0)
    mean["other"] = max(total - sum(mean.values()), 0.0)
    share = {k: v / total for k, v in mean.items()} if total else {}
    return {"requests": n, "total_ms": total, "ms": mean, "share": share}


def machine() -> dict:
    import onnxruntime

    cpu = ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
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


LOGGED = ("keystroke_hit", "rank_200")


def _logging_on_off(on: AppServer, off: AppServer, files: dict, duration: float, warmup: float, cpus) -> dict:
    """keystroke_hit and rank_200 against the service with and without the impression log, in short
    alternating segments (on, off, on, off, ...: this machine's speed drifts by tens of percent within a
    minute), five pairs. Each ratio is the median over the pairs of on / off within a pair (the two
    segments of a pair run seconds apart, so the drift between them is small); each side's p99 is the
    median of its segments' p99s, its req/s their mean."""
    out = {}
    segment = max(duration / 3, 1.5)
    for name, bodies in (("keystroke_hit", files["hit"]), ("rank_200", files["rank_200"])):
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        print(f"bench: {name} with the impression log on and off (10 x {segment:.0f}s, alternating)", flush=True)
        for side in ("on", "off") * 5:
            server = on if side == "on" else off
            runs[side].append(_drive(server.url, "/rank", bodies, 8, segment, 0.5, cpus))
        pairs = list(zip(runs["on"], runs["off"], strict=True))
        p99 = {side: float(np.median([r["p99_ms"] for r in rs])) for side, rs in runs.items()}
        rps = {side: float(np.mean([r["rps"] for r in rs])) for side, rs in runs.items()}
        errors = sum(r["errors"] for rs in runs.values() for r in rs)
        out[name] = {
            "p99_ms": p99,
            "rps": rps,
            "errors": errors,
            "p99_ratio": float(np.median([a["p99_ms"] / max(b["p99_ms"], 1e-9) for a, b in pairs])),
            "rps_ratio": float(np.median([a["rps"] / max(b["rps"], 1e-9) for a, b in pairs])),
            "pairs": [
                {"on": a["rps"], "off": b["rps"], "p99_on": a["p99_ms"], "p99_off": b["p99_ms"]} for a, b in pairs
            ],
        }
    return out


def rollout_copy(bundle: Path, work: Path) -> Path:
    """The bundle under another version (same weights): the second model of the rollout scenario when none
    is given. Its cache keys differ from the original's, as a retrained model's would."""
    copy = work / "rollout-bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] += "-rollout"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _rollout(
    service: AppServer,
    token: str,
    second: Path,
    bodies: Path,
    duration: float,
    warmup: float,
    cpus,
    every_s: float = 2.0,
) -> dict:
    """rank_200 at concurrency 8 while the default model is switched between two loaded models every 2 s."""
    auth = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=service.url, headers=auth, timeout=300) as admin:
        r = admin.post("/admin/models", json={"name": "candidate", "path": str(second)})
        r.raise_for_status()
        stop, switches = threading.Event(), []

        def switch() -> None:
            names = itertools.cycle(["candidate", "default"])
            if stop.wait(warmup):
                return
            while not stop.wait(every_s):
                switches.append(admin.put("/admin/routing", json={"default": next(names)}).status_code)

        switcher = threading.Thread(target=switch)
        switcher.start()
        try:
            result = _drive(service.url, "/rank", bodies, 8, duration, warmup, cpus)
        finally:
            stop.set()
            switcher.join()
        admin.put("/admin/routing", json={"default": "default"})
    return result | {"switches": len(switches), "switch_failures": sum(code != 200 for code in switches)}


def run_bench(
    bundle: Path, quick: bool = False, out_dir: Path = Path("results"), rollout_bundle: Path | None = None
) -> dict:
    duration, warmup = (6.0, 1.5) if quick else (15.0, 3.0)
    server_cpus, load_cpus = _cpus()
    manifest = json.loads((bundle / "manifest.json").read_text())
    sc = Scenarios(bundle)
    work = Path(tempfile.mkdtemp(prefix="unirank-bench-"))
    files = _request_files(sc, work, quick)
    second = rollout_bundle or rollout_copy(bundle, work)
    sweep: list[dict] = []
    with _Servers(bundle, server_cpus, load_cpus) as servers:
        scenarios = _drive_scenarios(servers, files, duration, warmup, load_cpus)
        scenarios["keystroke_get"]["browser_cache"] = browser_cache_share(
            visits(sc.tables, 2000, seed=0), _max_age(servers.service.url)
        )
        print("bench: rank_200 stage profile (sequential, from Server-Timing)", flush=True)
        stages = stage_profile(servers.service.url, files["rank_200"])
        scenarios["events"]["events_per_s"] = scenarios["events"]["rps"] * 100
        rollout_s = max(duration, 5 * ROLLOUT_EVERY_S)  # a few switches even in a quick run
        every = f"the default model switched every {ROLLOUT_EVERY_S:.0f}s"
        print(f"bench: rollout (rank_200, {every}, {rollout_s:.0f}s)", flush=True)
        scenarios["rollout"] = _rollout(
            servers.service, servers.token, second, files["rank_200"], rollout_s, warmup, load_cpus, ROLLOUT_EVERY_S
        )
        logging = _logging_on_off(servers.service, servers.unlogged, files, duration, warmup, load_cpus)
        if not quick:
            for c in (1, 2, 4, 8, 16, 32):
                print(f"bench: rank_200 at concurrency {c}", flush=True)
                sweep.append(_drive(servers.service.url, "/rank", files["rank_200"], c, duration / 2, 1.0, load_cpus))
    spec = ModelSpec.from_dict(manifest["model"])
    model = _model_limits(bundle, spec, scenarios, server_cpus)
    result = {
        "machine": machine() | {"server_cpus": sorted(server_cpus or []), "loadgen_cpus": sorted(load_cpus or [])},
        "bundle": {"version": manifest["version"], "personalization": manifest["personalization"]},
        "mode": "quick" if quick else "full",
        "scenarios": scenarios,
        "ratios": _ratios(scenarios, model["limits"], logging),
        "limits": model["limits"],
        "rank_200_split": model["rank_200_split"],
        "rank_200_stages": stages,
        "impression_log": logging,
        "scoring_efficiency": model["scoring"]["achieved_flops"] / model["scoring"]["numpy_matmul_flops"],
        "scoring": model["scoring"],
        "rank_200_vs_concurrency": sweep,
    }
    result["targets"] = check_targets(result)
    return save_results(result, out_dir, "bench", format_table(result), plot)


def _request_files(sc: Scenarios, work: Path, quick: bool) -> dict[str, Path]:
    """Each scenario's request bodies, one a line, for the load generator."""
    return {
        "hit": _write(work / "hit.jsonl", [sc.keystroke_hit() for _ in range(200)]),
        "get": _write(work / "get.txt", [sc.keystroke_get() for _ in range(200)]),
        "miss": _write(work / "miss.jsonl", [sc.keystroke_miss(i) for i in range(60_000 if quick else 150_000)]),
        "rank_200": _write(work / "rank200.jsonl", [sc.rank_200() for _ in range(500)]),
        "events": _write(work / "events.jsonl", [sc.events_100() for _ in range(200)]),
    }


class _Servers:
    """What the bench drives: a real Redis (on the load generator's core: it stands for another machine),
    the service, the same service without the impression log (its own Redis keys for the model list) and
    the naive reference, each server on the server's core; all stopped on the way out."""

    def __init__(self, bundle: Path, server_cpus, load_cpus):
        self.token = secrets.token_hex(16)
        self.redis = RedisServer(cpus=load_cpus)
        env = {
            "UNIRANK_BUNDLE": str(bundle),
            "REDIS_URL": self.redis.url,
            "UNIRANK_BENCH_ENDPOINTS": "1",
            "UNIRANK_ADMIN_TOKEN": self.token,
        }
        self.service = AppServer("service.api:create_app", env, server_cpus)
        unlogged = {"UNIRANK_IMPRESSION_LOG": "false", "UNIRANK_CONTROL_KEY": "ur:control:unlogged"}
        self.unlogged = AppServer("service.api:create_app", env | unlogged, server_cpus)
        self.naive = AppServer("loadtest.naive_server:create_app", {"UNIRANK_BUNDLE": str(bundle)}, server_cpus)

    def __enter__(self) -> _Servers:
        try:
            for server in (self.service, self.unlogged, self.naive):
                server.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for server in (self.service, self.unlogged, self.naive, self.redis):
            server.stop()


def _drive_scenarios(servers: _Servers, files: dict, duration: float, warmup: float, load_cpus) -> dict[str, dict]:
    """Each scenario at concurrency 8 (keystroke_miss also counts the candidates a request scored)."""
    service = servers.service.url
    plan = [
        ("ceiling", service, "/bench/noop", files["hit"]),
        ("keystroke_hit", service, "/rank", files["hit"]),
        ("keystroke_get", service, "GET", files["get"]),
        ("keystroke_miss", service, "/rank", files["miss"]),
        ("rank_200", service, "/rank", files["rank_200"]),
        ("naive_200", servers.naive.url, "/rank", files["rank_200"]),
        ("events", service, "/events", files["events"]),
    ]
    scenarios: dict[str, dict] = {}
    for name, url, path, bodies in plan:
        print(f"bench: {name} (concurrency 8, {duration:.0f}s)", flush=True)
        before = _candidates_scored(service, "search") if name == "keystroke_miss" else None
        scenarios[name] = _drive(url, path, bodies, 8, duration, warmup, load_cpus)
        if before is not None:
            total, count = _candidates_scored(service, "search")
            scenarios[name]["candidates_per_request"] = (total - before[0]) / max(count - before[1], 1.0)
    return scenarios


def _model_limits(bundle: Path, spec: ModelSpec, scenarios: dict, server_cpus) -> dict:
    """What one core could answer if a request cost only the HTTP stack (the ceiling) and the model's FLOPs
    at the matmul rate (`limits`, which the ratios compare against); the same with the model at
    onnxruntime's measured speed, which splits the gap to the limit into the runtime's share (its graph
    against the matmul rate) and the service's own (everything else a request does)."""
    flops = spec.flops_per_candidate()
    achieved = scenarios["rank_200"]["rps"] * 200 * flops
    probe = matmul_probe(spec.width, server_cpus)
    numpy_flops = probe["flops"]
    ceiling_s = 1.0 / scenarios["ceiling"]["rps"]
    miss_candidates = scenarios["keystroke_miss"].get("candidates_per_request", 0.0)
    limits = {
        "rank_200_rps": 1.0 / (ceiling_s + 200 * flops / numpy_flops),
        "keystroke_miss_rps": 1.0 / (ceiling_s + miss_candidates * flops / numpy_flops),
    }
    rank_200_split = split_rank_200(
        scenarios["rank_200"]["rps"], ceiling_s, 200 * flops / numpy_flops, onnxruntime_probe(bundle, server_cpus)
    )
    limits["rank_200_onnxruntime_rps"] = 1e6 / (rank_200_split["ceiling_us"] + rank_200_split["onnxruntime_us"])
    scoring = {
        "flops_per_candidate": flops,
        "achieved_flops": achieved,
        "numpy_matmul_flops": numpy_flops,
        "blas": probe["blas"],
        "blas_env_unset_for_the_probe": probe["unset"],
    }
    return {"limits": limits, "rank_200_split": rank_200_split, "scoring": scoring}


def _ratios(scenarios: dict, limits: dict, logging: dict) -> dict[str, float]:
    s = scenarios
    return (
        {
            "keystroke_hit_vs_ceiling": s["keystroke_hit"]["rps"] / s["ceiling"]["rps"],
            "keystroke_get_vs_keystroke_hit": s["keystroke_get"]["rps"] / s["keystroke_hit"]["rps"],
            "rank_200_vs_naive_200": s["rank_200"]["rps"] / max(s["naive_200"]["rps"], 1e-9),
            "rollout_p99_vs_rank_200_p99": s["rollout"]["p99_ms"] / max(s["rank_200"]["p99_ms"], 1e-9),
        }
        | {f"{name}_p99_log_on_vs_off": logging[name]["p99_ratio"] for name in LOGGED}
        | {f"{name}_rps_log_on_vs_off": logging[name]["rps_ratio"] for name in LOGGED}
        | {
            "rank_200_vs_limit": s["rank_200"]["rps"] / limits["rank_200_rps"],
            "keystroke_miss_vs_limit": s["keystroke_miss"]["rps"] / limits["keystroke_miss_rps"],
            "rank_200_vs_onnxruntime_limit": s["rank_200"]["rps"] / limits["rank_200_onnxruntime_rps"],
        }
    )


SCENARIOS = (
    "ceiling",
    "keystroke_hit",
    "keystroke_get",
    "keystroke_miss",
    "rank_200",
    "naive_200",
    "events",
    "rollout",
)
RATIOS = (
    "keystroke_hit_vs_ceiling",
    "keystroke_get_vs_keystroke_hit",
    "rank_200_vs_naive_200",
    "rollout_p99_vs_rank_200_p99",
    "keystroke_hit_p99_log_on_vs_off",
    "rank_200_p99_log_on_vs_off",
    "keystroke_hit_rps_log_on_vs_off",
    "rank_200_rps_log_on_vs_off",
    "rank_200_vs_limit",
    "keystroke_miss_vs_limit",
    "rank_200_vs_onnxruntime_limit",
)
SCENARIO_FIELDS = ("rps", "p50_ms", "p95_ms", "p99_ms", "errors", "concurrency")


def completeness_problems(r: dict) -> list[str]:
    """What a CI smoke run checks: every scenario and ratio present, traffic flowed, zero errors."""
    keys = ("machine", "scenarios", "ratios", "scoring_efficiency", "limits", "rank_200_split", "rank_200_stages")
    problems = [f"missing key {k}" for k in keys if k not in r]
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
    problems += [f"missing ratio {k}" for k in RATIOS if k not in r.get("ratios", {})]
    if "browser_cache" not in r.get("scenarios", {}).get("keystroke_get", {"browser_cache": None}):
        problems.append("keystroke_get: missing browser_cache")
    rollout = r.get("scenarios", {}).get("rollout", {})
    if rollout.get("switch_failures", 0) or not rollout.get("switches", 1):
        problems.append(
            f"rollout: {rollout.get('switches')} default switches, {rollout.get('switch_failures')} refused"
        )
    return problems


def check_targets(r: dict) -> dict:
    s = r["scenarios"]
    return {
        "keystroke_hit_vs_ceiling >= 0.6": r["ratios"]["keystroke_hit_vs_ceiling"]
        >= TARGETS["keystroke_hit_vs_ceiling"],
        "keystroke_hit p99 <= 5 ms": s["keystroke_hit"]["p99_ms"] <= TARGETS["keystroke_hit_p99_ms"],
        "rank_200_vs_naive_200 >= 5": r["ratios"]["rank_200_vs_naive_200"] >= TARGETS["rank_200_vs_naive_200"],
        "rank_200 p99 <= 15 ms": s["rank_200"]["p99_ms"] <= TARGETS["rank_200_p99_ms"],
        "events >= 10000/s": s["events"]["events_per_s"] >= TARGETS["events_per_s"],
        "zero errors": all(v["errors"] == 0 for v in s.values()),
        "rollout p99 <= 1.5x rank_200 p99": r["ratios"]["rollout_p99_vs_rank_200_p99"]
        <= TARGETS["rollout_p99_vs_rank_200_p99"],
        "impression log p99 on/off <= 1.1 (keystroke_hit, rank_200)": all(
            r["ratios"][f"{n}_p99_log_on_vs_off"] <= TARGETS["log_on_vs_off"] for n in LOGGED
        ),
        "impression log costs <= 3 % of req/s (keystroke_hit, rank_200)": all(
            r["ratios"][f"{n}_rps_log_on_vs_off"] >= 1 - TARGETS["log_rps_loss"] for n in LOGGED
        ),
    }


def format_table(r: dict) -> str:
    headers = ("scenario", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors")
    rows = [
        (
            n,
            s["concurrency"],
            f"{s['rps']:.0f}",
            f"{s['p50_ms']:.2f}",
            f"{s['p95_ms']:.2f}",
            f"{s['p99_ms']:.2f}",
            s["errors"],
        )
        for n, s in r["scenarios"].items()
    ]
    lines = [markdown_table(headers, rows)]
    lines += [
        "",
        f"- keystroke_hit / ceiling: {r['ratios']['keystroke_hit_vs_ceiling']:.2f}",
        *(
            "- keystroke_get (GET /search, warm cache) / keystroke_hit: "
            f"{r['ratios']['keystroke_get_vs_keystroke_hit']:.2f}; "
            f"a browser cache (max-age {bc['max_age_s']:.0f} s) would have answered {bc['share']:.1%} of "
            f"{bc['requests']} keystroke requests in {bc['visits']} simulated visits, a shared cache (CDN) "
            f"{bc['shared_cache_share']:.1%} at {bc['shared_cache_visits_per_s']:.0f} visits/s"
            for bc in [r["scenarios"].get("keystroke_get", {}).get("browser_cache")]
            if bc
        ),
        f"- rank_200 / naive_200: {r['ratios']['rank_200_vs_naive_200']:.1f}x",
        f"- rollout (default model switched every {ROLLOUT_EVERY_S:.0f} s, "
        f"{r['scenarios']['rollout']['switches']} switches): "
        f"p99 {r['ratios']['rollout_p99_vs_rank_200_p99']:.2f}x the steady rank_200 p99, "
        f"{r['scenarios']['rollout']['errors']} failed requests",
        f"- events acknowledged: {r['scenarios']['events']['events_per_s']:.0f}/s",
        *(
            f"- {n} with the impression log on / off (alternating segments): p99 {lg['p99_ms']['on']:.2f} / "
            f"{lg['p99_ms']['off']:.2f} ms = {lg['p99_ratio']:.2f}x, "
            f"req/s {lg['rps']['on']:.0f} / {lg['rps']['off']:.0f} = {lg.get('rps_ratio', float('nan')):.3f}"
            for n, lg in r.get("impression_log", {}).items()
        ),
        "- scoring efficiency (model FLOP/s in /rank over numpy matmul FLOP/s, one core): "
        f"{r['scoring_efficiency']:.3f}",
    ]
    if "limits" in r:
        lines += [
            f"- limits (ceiling + the model's FLOPs at the matmul rate): rank_200 {r['limits']['rank_200_rps']:.0f}/s "
            f"(reached {r['ratios']['rank_200_vs_limit']:.1%}), keystroke_miss "
            f"{r['limits']['keystroke_miss_rps']:.0f}/s (reached {r['ratios']['keystroke_miss_vs_limit']:.1%})",
            *(
                f"- rank_200 with the model at onnxruntime's measured speed ({sp['onnxruntime_requests_per_call']} "
                f"requests a call) instead of the matmul rate: {r['limits']['rank_200_onnxruntime_rps']:.0f}/s "
                f"(reached {r['ratios']['rank_200_vs_onnxruntime_limit']:.1%}); of {sp['per_request_us']:.0f} µs per "
                f"request, the HTTP stack (ceiling) {sp['ceiling_us']:.0f}, onnxruntime {sp['onnxruntime_us']:.0f} "
                f"(the model's FLOPs at the matmul rate: {sp['model_at_matmul_rate_us']:.0f}), the service's own "
                f"work {sp['service_us']:.0f}"
                for sp in [r.get("rank_200_split")]
                if sp
            ),
            "",
            markdown_table(
                ("rank_200 stage (sequential, Server-Timing)", "ms", "share"),
                [
                    (k, f"{v:.3f}", f"{r['rank_200_stages']['share'].get(k, 0):.0%}")
                    for k, v in r["rank_200_stages"]["ms"].items()
                ],
            ),
        ]
    if r["rank_200_vs_concurrency"]:
        rows = [
            (s["concurrency"], f"{s['rps']:.0f}", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}")
            for s in r["rank_200_vs_concurrency"]
        ]
        lines += ["", markdown_table(("rank_200 concurrency", "req/s", "p50 ms", "p99 ms"), rows)]
    lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["targets"].items())]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    with figure(path, 2, size=(13, 4.8), dpi=110) as (fig, axes):
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
