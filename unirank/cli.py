"""The `unirank` command: one CLI for every job (data, train, evaluate, build-demo, serve, bench).

Heavy imports (torch, the service) happen inside each command, so `unirank serve` never loads torch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="unirank: a unified search and recommendation ranker.", no_args_is_help=True)
data_app = typer.Typer(help="Engagement data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ALL_TASKS = "search,prequery,more_like_this"


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output directory (events.parquet, entities.parquet)")],
    users: int = 20_000,
    entities: int = 5_000,
    events: int = 1_000_000,
    seed: int = 0,
    themes: Annotated[int, typer.Option(help="Hidden title themes users have a taste for, revealed only by title words (0: off; max 16)")] = 0,
    continuation: Annotated[float, typer.Option(help="Share of home-page visits continuing the franchise of the user's last search click (0: off)")] = 0.0,
) -> None:
    """Generate a deterministic synthetic streaming-catalog log."""
    from model_export.synth import SynthParams, generate

    started = time.perf_counter()
    summary = generate(SynthParams(users=users, entities=entities, events=events, seed=seed, themes=themes, continuation=continuation), out)
    typer.echo(f"{summary['events']} events, {summary['requests']} requests, {summary['clicks']} clicks "
               f"written to {out} in {time.perf_counter() - started:.1f}s")  # fmt: skip


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset directory in the event schema")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write")],
    personalization: Annotated[str, typer.Option(help="none | cluster | full")] = "full",
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks to train on")] = ALL_TASKS,
    epochs: int = 8,
    seed: int = 0,
    batch_size: int = 1024,
    task_gate: Annotated[bool, typer.Option(help="Task-conditioned feature scaling (USR)")] = False,
    mmoe_experts: Annotated[int, typer.Option(help="MMoE: shared experts, one gate and head per task (0: off)")] = 0,
    play_head: Annotated[bool, typer.Option(help="Also learn P(play | click); the bundle outputs P(play)")] = False,
    rank_by: Annotated[str, typer.Option(help="The bundle's default ranking score: click | play")] = "click",
    history_encoder: Annotated[bool, typer.Option(help="Self-attention over the mixed search/rec history (full only)")] = False,
    text_features: Annotated[bool, typer.Option(help="MiniLM title features + aspect gate, for cold start")] = False,
    text_vector: Annotated[bool, typer.Option(help="With --text-features: the title vector too, not only its similarities to the source and history titles")] = True,
    cold_entity_rate: Annotated[float, typer.Option(help="Share of training rows shown as a new entity (no id, no statistics), so new entities rank on content")] = 0.0,
) -> None:
    """Train the unified ranker, export the ONNX bundle (parity-checked) and evaluate it on the test window."""
    from model_export.evaluate import format_table
    from model_export.train import TrainConfig, train_bundle

    cfg = TrainConfig(personalization=personalization, tasks=tuple(tasks.split(",")), epochs=epochs, seed=seed,
                      batch_size=batch_size, task_gate=task_gate, mmoe_experts=mmoe_experts, play_head=play_head,
                      rank_by=rank_by, history_encoder=history_encoder, text_features=text_features,
                      text_vector=text_vector, cold_entity_rate=cold_entity_rate)  # fmt: skip
    manifest = train_bundle(data, out, cfg, log=typer.echo)
    typer.echo(format_table(manifest["metrics"]))


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Option(help="Bundle directory")],
    data: Annotated[Path, typer.Option(help="Dataset directory")],
    split: str = "test",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Where to write the JSON")] = None,
) -> None:
    """Offline metrics per task for a bundle (through onnxruntime) next to a popularity baseline."""
    from model_export.evaluate import evaluate_bundle, format_table

    json_out = json_out or Path("results") / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = evaluate_bundle(bundle, data, split, json_out)
    typer.echo(format_table(result))
    typer.echo(f"written to {json_out}")


@app.command()
def study(
    data: Annotated[Optional[Path], typer.Option(help="Dataset in the event schema (default: synthetic, generated)")] = None,
    quick: Annotated[bool, typer.Option(help="Small data, one seed, two epochs: a smoke test")] = False,
    out: Annotated[Path, typer.Option(help="Where results/study-<timestamp>/ goes")] = Path("results"),
    seeds: Annotated[int, typer.Option(help="Seeds per trained row")] = 3,
) -> None:
    """Unified vs separate models, personalization lift, ablations and baselines, with paired tests."""
    from model_export.study import run_study
    from model_export.synth import SynthParams, generate

    if data is None:
        data = Path("artifacts/study-quick-data" if quick else "artifacts/study-data")
        if not (data / "events.parquet").exists():
            params = SynthParams(users=1_500, entities=800, events=80_000, seed=0) if quick else \
                SynthParams(users=12_000, entities=4_000, events=500_000, seed=0)  # fmt: skip
            generate(params, data)
    path = run_study(data, out, seeds=(0,) if quick else tuple(range(seeds)), epochs=2 if quick else 6, log=typer.echo)
    typer.echo((path / "report.md").read_text())


@app.command("cold-start")
def cold_start(
    data: Annotated[Path, typer.Option(help="Dataset in the event schema")] = Path("artifacts/demo-data"),
    seeds: Annotated[int, typer.Option(help="Seeds per row")] = 3,
    epochs: int = 6,
    share: Annotated[float, typer.Option(help="Share of entities held out (never engaged before the test window)")] = 0.1,
    out: Annotated[Path, typer.Option(help="Where results/cold-start-<timestamp>/ goes")] = Path("results"),
) -> None:
    """Entities unseen in training: NDCG@10 of the model with and without title text features."""
    from model_export.cold_start import run_cold_start

    path = run_cold_start(data, out, tuple(range(seeds)), epochs, share, log=typer.echo)
    typer.echo((path / "report.md").read_text())


@app.command("build-demo")
def build_demo(
    out: Annotated[Path, typer.Option(help="Bundle directory")] = Path("artifacts/demo"),
    data: Annotated[Path, typer.Option(help="Where the demo dataset goes")] = Path("artifacts/demo-data"),
    events: int = 200_000,
    seed: int = 0,
) -> None:
    """Small synthetic data -> train -> export, in one go (the bundle `make serve` uses)."""
    from model_export.evaluate import format_table
    from model_export.synth import SynthParams, generate
    from model_export.train import TrainConfig, train_bundle

    started = time.perf_counter()
    generate(SynthParams(users=4_000, entities=2_000, events=events, seed=seed), data)
    manifest = train_bundle(data, out, TrainConfig(personalization="full", epochs=6, seed=seed), log=typer.echo)
    typer.echo(format_table(manifest["metrics"]))
    typer.echo(f"demo bundle ready in {time.perf_counter() - started:.0f}s: {out}")


@app.command()
def serve(
    bundle: Annotated[Optional[Path], typer.Option(help="Bundle directory [env UNIRANK_BUNDLE]")] = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address [env UNIRANK_HOST]")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port [env UNIRANK_PORT]")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes [env UNIRANK_WORKERS]")] = None,
    log_level: str = "info",
) -> None:
    """Serve a bundle over HTTP (uvicorn with uvloop and httptools). Without REDIS_URL, an embedded Redis.

    Options left out come from the settings (UNIRANK_* environment variables). On SIGTERM the server stops
    accepting connections and lets in-flight requests finish for UNIRANK_GRACEFUL_SHUTDOWN_S.
    """
    import os
    import tempfile

    import uvicorn

    from service.settings import Settings

    settings = Settings()
    bundle, host = bundle or Path(settings.bundle), host or settings.host
    port, workers = port or settings.port, workers or settings.workers
    os.environ["UNIRANK_BUNDLE"] = str(bundle)
    embedded = None
    if workers > 1:
        if not (os.environ.get("REDIS_URL") or os.environ.get("UNIRANK_REDIS_URL")):
            from service.cache import EmbeddedRedis

            embedded = EmbeddedRedis()  # one server shared by every worker
            os.environ["REDIS_URL"] = embedded.url
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="unirank-prom-"))
    try:
        uvicorn.run("service.api:create_app", factory=True, host=host, port=port, workers=workers, loop="uvloop",
                    http="httptools", access_log=False, log_level=log_level,
                    timeout_graceful_shutdown=settings.graceful_shutdown_s)  # fmt: skip
    finally:
        if embedded:
            embedded.close()


@app.command()
def bench(
    bundle: Annotated[Path, typer.Option(help="Bundle to serve")] = Path("artifacts/demo"),
    quick: Annotated[bool, typer.Option(help="Short run (under 2 minutes), no concurrency sweep")] = False,
    out: Annotated[Path, typer.Option(help="Where results go")] = Path("results"),
    check: Annotated[bool, typer.Option(help="Exit 1 unless the JSON is complete and no scenario had errors")] = False,
) -> None:
    """One run: Redis + the service + the naive reference, every scenario, JSON + table + PNG."""
    from loadtest.bench import completeness_problems, format_table, run_bench

    result = run_bench(bundle, quick, out)
    typer.echo(format_table(result))
    typer.echo(f"written: {', '.join(result['files'].values())}")
    if check and (problems := completeness_problems(json.loads(Path(result["files"]["json"]).read_text()))):
        typer.echo("bench check failed: " + "; ".join(problems), err=True)
        raise typer.Exit(1)


@app.command("bench-scoring")
def bench_scoring(
    bundle: Annotated[Path, typer.Option(help="Bundle whose model is scored")] = Path("artifacts/demo"),
    sizes: Annotated[str, typer.Option(help="Candidates per call, comma-separated")] = "1,10,100,1000,10000,100000",
    out: Annotated[Path, typer.Option(help="Where results go")] = Path("results"),
) -> None:
    """One onnxruntime call vs candidates per call: CPU EP (1 thread, all cores) and CUDA EP when present."""
    from loadtest.accel_bench import run_scoring

    result = run_scoring(bundle, tuple(int(x) for x in sizes.split(",")), out)
    typer.echo(result["table"])
    typer.echo(f"written: {', '.join(result['files'].values())}")


@app.command("bench-batching")
def bench_batching(
    bundle: Annotated[Path, typer.Option(help="Bundle to serve")] = Path("artifacts/demo"),
    provider: Annotated[str, typer.Option(help="auto | cuda | cpu")] = "auto",
    concurrency: Annotated[str, typer.Option(help="Concurrency levels, comma-separated")] = "1,4,16,64",
    duration: float = 8.0,
    window_ms: float = 1.0,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes of the service")] = 1,
    out: Annotated[Path, typer.Option(help="Where results go")] = Path("results"),
) -> None:
    """POST /rank throughput and latency with micro-batching on and off, at each concurrency."""
    from loadtest.accel_bench import run_batching

    result = run_batching(bundle, provider, tuple(int(x) for x in concurrency.split(",")), duration, window_ms, workers, out)
    typer.echo(result["table"])
    typer.echo(f"written: {', '.join(result['files'].values())}")


@app.command("bench-options")
def bench_options(
    bundle: Annotated[Path, typer.Option(help="Bundle with the model options")] = Path("artifacts/all-options"),
    baseline: Annotated[Path, typer.Option(help="Bundle to compare with (same catalogue)")] = Path("artifacts/demo"),
    n: Annotated[int, typer.Option(help="Requests per scenario and bundle")] = 2000,
    out: Annotated[Path, typer.Option(help="Where results go")] = Path("results"),
) -> None:
    """/rank latency of a bundle against a baseline, both served at once, requests interleaved."""
    from loadtest.options_bench import run_options

    result = run_options(bundle, baseline, n, out)
    typer.echo((Path(result["files"]["markdown"])).read_text())
    typer.echo(f"written: {', '.join(result['files'].values())}")


@app.command()
def latency(
    bundle: Annotated[Path, typer.Option(help="The bundle the service runs (for realistic request bodies)")] = Path("artifacts/demo"),
    url: str = "http://127.0.0.1:8000",
    n: int = 1000,
) -> None:
    """Single-request latency (p50/p99 over N sequential calls): cache hit, cache miss, 200 candidates."""
    from loadtest.latency import sequential_latency
    from loadtest.scenarios import Scenarios

    result = sequential_latency(url, Scenarios(bundle), n)
    typer.echo("| scenario | n | p50 ms | p99 ms | server p50 ms | server p99 ms |\n|---|---|---|---|---|---|")
    for name, r in result.items():
        typer.echo(f"| {name} | {r['n']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['server_p50_ms']:.2f} | {r['server_p99_ms']:.2f} |")


@app.command()
def manifest(bundle: Path) -> None:
    """Print a bundle's manifest summary."""
    m = json.loads((bundle / "manifest.json").read_text())
    typer.echo(json.dumps({k: m[k] for k in ("version", "personalization", "tasks", "parity_max_abs_diff")}, indent=2))


if __name__ == "__main__":
    app()
