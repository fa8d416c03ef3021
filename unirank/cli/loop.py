"""The loop: `unirank logs export|sink`, `unirank simulate`, `unirank experiment report`."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from unirank.cli.app import app, bundle_dir

logs_app = typer.Typer(help="The served-impression log: export it as training data.", no_args_is_help=True)
experiment_app = typer.Typer(help="Online experiments: the report of which variant won.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
app.add_typer(experiment_app, name="experiment")

RedisUrl = Annotated[
    str,
    typer.Option(
        "--redis",
        envvar="REDIS_URL",
        help="The service's Redis (redis+cluster://host:port: a Redis Cluster) [env REDIS_URL]",
    ),
]
Streams = {"impressions_stream": "ur:impressions", "feedback_stream": "ur:feedback", "catalog_stream": "ur:entities"}


def _when(value: str | None) -> int | None:
    """ISO 8601 or Unix seconds -> Unix milliseconds."""
    if value is None:
        return None
    try:
        return int(float(value) * 1000)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        raise typer.BadParameter(f"expected ISO 8601 (2026-11-23T10:00) or Unix seconds, got {value!r}") from None


def _client(url: str):
    from unirank.loop.redis_client import redis_client

    return redis_client(url)


@logs_app.command("export")
def export(
    out: Annotated[
        str, typer.Option(help="Dataset directory (events/ partitions, entities.parquet), or an s3:// / gs:// URL")
    ],
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    bundle: Annotated[
        Path, typer.Option(help="The bundle whose catalogue the entities come from", callback=bundle_dir)
    ] = Path("artifacts/demo"),
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601 or Unix seconds)")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (ISO 8601 or Unix seconds)")] = None,
    settle: Annotated[
        float, typer.Option(min=0, help="Leave out the last S seconds (their clicks may still come)")
    ] = 0.0,
) -> None:
    """Join the impression log and its feedback into the event schema; `unirank train --data OUT` reads it.
    Resumable: a second run continues after the last impression exported."""
    from unirank.loop.logs import export_log

    state = export_log(_client(redis_url), out, bundle, _when(since), _when(until), settle)
    run = state["this_run"]
    typer.echo(
        f"{run['impressions']} impressions, {run['rows']} rows ({run['clicked']} clicked) exported to {out} "
        f"(in all: {state['impressions']} impressions, {state['rows']} rows)"
    )


@logs_app.command("sink")
def sink_command(
    out: Annotated[str, typer.Option(help="Dataset directory the partitions accumulate in, or an s3:// / gs:// URL")],
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    bundle: Annotated[
        Path, typer.Option(help="The bundle whose catalogue the entities come from", callback=bundle_dir)
    ] = Path("artifacts/demo"),
    every: Annotated[float, typer.Option(min=1, help="Seconds between moves")] = 60.0,
    settle: Annotated[float, typer.Option(min=0, help="Impressions younger than this wait for their clicks")] = 300.0,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many moves (default: run until stopped)")
    ] = None,
) -> None:
    """Move the log into time-partitioned Parquet files continuously, trimming the streams of what moved."""
    from unirank.loop.logs import sink

    sink(_client(redis_url), out, bundle, every, settle, rounds, log=typer.echo)


@app.command()
def simulate(
    data: Annotated[Path, typer.Option(help="The synthetic dataset the service's model knows (its synth.json)")],
    url: Annotated[
        str, typer.Option(envvar="UNIRANK_URL", help="The service [env UNIRANK_URL]")
    ] = "http://127.0.0.1:8000",
    users: Annotated[int, typer.Option(min=1, help="Simulated users")] = 100,
    concurrency: Annotated[int, typer.Option(min=1, help="Sessions in flight at once, at most")] = 50,
    duration: Annotated[float, typer.Option(min=1, help="Seconds, at most")] = 60.0,
    sessions: Annotated[
        int | None, typer.Option(min=1, help="Sessions per user, at most (a reproducible amount)")
    ] = None,
    seed: int = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Where to write the summary")] = None,
    ingest_token: Annotated[
        str | None, typer.Option(envvar="UNIRANK_INGEST_TOKEN", help="Sent with /events when the service wants one")
    ] = None,
) -> None:
    """Users with the synthetic generator's hidden tastes type, browse, click and play against a service."""
    from unirank.loop.simulate import simulate as run

    if not (data / "synth.json").is_file():
        raise typer.BadParameter(f"{data} has no synth.json (made by `unirank data synth`)", param_hint="--data")
    summary = run(url, data, users, duration, seed, sessions, concurrency=concurrency, ingest_token=ingest_token)
    text = json.dumps(summary, indent=2)
    typer.echo(text)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text)


@experiment_app.command("report")
def experiment_report(
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    experiment: Annotated[str | None, typer.Option(help="Its name (default: the most recent in the log)")] = None,
    control: Annotated[
        str | None, typer.Option(help="The variant the others are compared with (default: `default`)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601 or Unix seconds)")] = None,
    power_sizes: Annotated[
        str | None, typer.Option("--power", help="User counts to estimate the power at, e.g. 25,50,100,200")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where experiment-<name>-<timestamp>.{json,md,png} go")] = Path("results"),
) -> None:
    """Per variant CTR, clicks and plays per request and MRR with 95 % intervals and a test (A/B), or
    wins/losses/ties and a binomial test (interleaving)."""
    from unirank.cli.app import parse_ints
    from unirank.loop.experiment import experiment_requests, experiments, format_report, plot, power, report
    from unirank.loop.logs import read_log

    log = read_log(_client(redis_url), _when(since))
    names = experiments(log)
    if not names:
        typer.echo("Error: no experiment traffic in the log", err=True)
        raise typer.Exit(2)
    name = experiment or names[-1]
    if name not in names:
        typer.echo(f"Error: no requests of experiment {name!r}; the log has {', '.join(names)}", err=True)
        raise typer.Exit(2)
    requests = experiment_requests(log, name)
    result = report(requests, control=control)
    if power_sizes:
        result["power"] = power(requests, list(parse_ints(power_sizes)))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"experiment-{name}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=2))
    table = format_report(result)
    base.with_suffix(".md").write_text(table)
    plot(result, base.with_suffix(".png"))
    typer.echo(table)
    typer.echo(f"written: {base}.json, {base}.md, {base}.png")
