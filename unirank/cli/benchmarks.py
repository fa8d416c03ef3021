"""Benchmarks: bench (the one-run benchmark), bench-scoring, bench-batching, bench-options, bench-train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from unirank.cli.app import app, bundle_dir, parse_ints

Bundle = Annotated[Path, typer.Option(help="Bundle to serve", callback=bundle_dir)]
Out = Annotated[Path, typer.Option(help="Where results go")]


def _written(result: dict) -> None:
    typer.echo(f"written: {', '.join(result['files'].values())}")


@app.command()
def bench(
    bundle: Bundle = Path("artifacts/demo"),
    quick: Annotated[bool, typer.Option(help="Short run (under 2 minutes), no concurrency sweep")] = False,
    out: Out = Path("results"),
    check: Annotated[bool, typer.Option(help="Exit 1 unless the JSON is complete and no scenario had errors")] = False,
    rollout_bundle: Annotated[
        Path | None,
        typer.Option(help="The second model of the rollout scenario (default: the bundle under another version)"),
    ] = None,
) -> None:
    """One run: Redis + the service + the naive reference, every scenario, JSON + table + PNG."""
    from loadtest.bench import completeness_problems, format_table, run_bench

    result = run_bench(bundle, quick, out, rollout_bundle)
    typer.echo(format_table(result))
    _written(result)
    if check and (problems := completeness_problems(json.loads(Path(result["files"]["json"]).read_text()))):
        typer.echo("bench check failed: " + "; ".join(problems), err=True)
        raise typer.Exit(1)


@app.command("bench-scoring")
def bench_scoring(
    bundle: Bundle = Path("artifacts/demo"),
    sizes: Annotated[
        str, typer.Option(help="Candidates per call, comma-separated", callback=parse_ints)
    ] = "1,10,100,1000,10000,100000",
    out: Out = Path("results"),
) -> None:
    """One onnxruntime call vs candidates per call: CPU EP (1 thread, all cores) and CUDA EP when present."""
    from loadtest.accel_bench import run_scoring

    result = run_scoring(bundle, parse_ints(sizes), out)
    typer.echo(result["table"])
    _written(result)


@app.command("bench-batching")
def bench_batching(
    bundle: Bundle = Path("artifacts/demo"),
    provider: Annotated[str, typer.Option(help="auto | cuda | cpu")] = "auto",
    concurrency: Annotated[
        str, typer.Option(help="Concurrency levels, comma-separated", callback=parse_ints)
    ] = "1,4,16,64",
    duration: float = 8.0,
    window_ms: float = 1.0,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes of the service")] = 1,
    out: Out = Path("results"),
) -> None:
    """POST /rank throughput and latency with micro-batching on and off, at each concurrency."""
    from loadtest.accel_bench import run_batching

    result = run_batching(bundle, provider, parse_ints(concurrency), duration, window_ms, workers, out)
    typer.echo(result["table"])
    _written(result)


@app.command("bench-options")
def bench_options(
    bundle: Annotated[Path, typer.Option(help="Bundle with the model options", callback=bundle_dir)] = Path(
        "artifacts/all-options"
    ),
    baseline: Annotated[Path, typer.Option(help="Bundle to compare with (same catalogue)", callback=bundle_dir)] = Path(
        "artifacts/demo"
    ),
    n: Annotated[int, typer.Option(min=1, help="Requests per scenario and bundle")] = 2000,
    out: Out = Path("results"),
) -> None:
    """/rank latency of a bundle against a baseline, both served at once, requests interleaved."""
    from loadtest.options_bench import run_options

    result = run_options(bundle, baseline, n, out)
    typer.echo(Path(result["files"]["markdown"]).read_text())
    _written(result)


@app.command()
def chaos(
    bundle: Bundle = Path("artifacts/demo"),
    quick: Annotated[bool, typer.Option(help="Short cases (what CI runs)")] = False,
    case: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these cases: schemathesis, hostile, redis_kill, redis_hang, overload, events_under_overload, "
            "sigterm, worker_kill, bundle"
        ),
    ] = None,
    out: Out = Path("results"),
) -> None:
    """The fault suite: real faults against a live service and Redis; a table of what held (JSON + markdown).
    Exits 1 when a case did not hold."""
    from loadtest.chaos import format_table, run_chaos

    result = run_chaos(bundle, quick, out, case, log=typer.echo)
    typer.echo(format_table(result))
    _written(result)
    if not result["held"]:
        raise typer.Exit(1)


@app.command("bench-train")
def bench_train(
    sizes: Annotated[
        str, typer.Option(help="Synthetic event counts, comma-separated", callback=parse_ints)
    ] = "1000000,5000000,20000000",
    quick: Annotated[bool, typer.Option(help="200k and 1M events (a few minutes)")] = False,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    out: Out = Path("results"),
) -> None:
    """Training time and peak memory as the data grows, and 1 vs 2 data-parallel processes: JSON + table + PNG."""
    from loadtest.train_bench import bench_train as run_bench_train
    from loadtest.train_bench import table

    chosen = [200_000, 1_000_000] if quick else list(parse_ints(sizes))
    result = run_bench_train(chosen, epochs, out)
    typer.echo(table(result))
    _written(result)
