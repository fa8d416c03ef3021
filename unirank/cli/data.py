"""`unirank data ...`: synthetic engagement logs and public datasets in the event schema."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from unirank.cli.app import data_app


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output directory (events.parquet or events/, entities.parquet)")],
    users: int = 20_000,
    entities: int = 5_000,
    events: int = 1_000_000,
    seed: int = 0,
    themes: Annotated[
        int, typer.Option(min=0, max=16, help="Hidden title themes users have a taste for, revealed by title words")
    ] = 0,
    continuation: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of home visits continuing the franchise of the last search click"),
    ] = 0.0,
    session_intent: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of search sessions with a short-term intent (a genre) that also drives the home visit "
            "before and after the search and the title page of what was found",
        ),
    ] = 0.0,
    part_events: Annotated[
        int,
        typer.Option(
            min=1000,
            help="Events generated and written at a time: a larger log is written as events/part-*.parquet, "
            "one time window each, holding one part in memory",
        ),
    ] = 1_000_000,
) -> None:
    """Generate a deterministic synthetic streaming-catalog log."""
    from model_export.synth import SynthParams, generate

    started = time.perf_counter()
    params = SynthParams(
        users=users,
        entities=entities,
        events=events,
        seed=seed,
        themes=themes,
        continuation=continuation,
        session_intent=session_intent,
    )
    summary = generate(params, out, part_events)
    parts = f" in {summary['parts']} parts" if summary["parts"] > 1 else ""
    typer.echo(
        f"{summary['events']} events, {summary['requests']} requests, {summary['clicks']} clicks "
        f"written to {out}{parts} in {time.perf_counter() - started:.1f}s"
    )


import_app = typer.Typer(help="Public datasets converted to the event schema.", no_args_is_help=True)
data_app.add_typer(import_app, name="import")


@import_app.command("movielens")
def import_movielens(
    src: Annotated[
        Path, typer.Argument(help="A MovieLens directory (ratings.csv, movies.csv, tags.csv), e.g. ml-latest-small")
    ],
    out: Annotated[Path, typer.Option(help="Output directory (events.parquet, entities.parquet, README.txt)")],
    impressions: Annotated[int, typer.Option(min=2, help="Rows per request: the rated title and what it beat")] = 10,
    play_rating: Annotated[float, typer.Option(help="Ratings from this up are also `played`")] = 4.0,
    search_share: Annotated[float, typer.Option(min=0, max=1, help="Untagged ratings found by search")] = 0.35,
    mlt_share: Annotated[float, typer.Option(min=0, max=1, help="Ratings reached from the title before")] = 0.3,
    seed: int = 0,
) -> None:
    """MovieLens ratings as an engagement log: every rating a request of one task with the page it was
    chosen from (README, "Real data: MovieLens"). The dataset's license (README.txt) is copied along."""
    from model_export.movielens import MovieLensParams
    from model_export.movielens import import_movielens as run

    missing = [name for name in ("ratings.csv", "movies.csv") if not (src / name).is_file()]
    if missing:
        raise typer.BadParameter(f"{src} has no {', '.join(missing)}", param_hint="SRC")
    params = MovieLensParams(impressions, play_rating, search_share, mlt_share, seed)
    if problems := params.problems():
        raise typer.BadParameter("; ".join(problems))
    started = time.perf_counter()
    summary = run(src, out, params)
    typer.echo(
        f"{summary['ratings']} ratings -> {summary['events']} events in {summary['requests']} requests "
        f"({', '.join(f'{t} {n}' for t, n in summary['tasks'].items())}), {summary['played']} played; "
        f"written to {out} in {time.perf_counter() - started:.1f}s (MovieLens license: {out / 'README.txt'})"
    )
