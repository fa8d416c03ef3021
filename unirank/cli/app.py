"""The Typer application the command modules register on, and the argument checks they share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import typer

from unirank.core.object_store import is_url, mirror
from unirank.core.schema import TASKS, SchemaError
from unirank.core.vocab import PERSONALIZATION_LEVELS

app = typer.Typer(
    help="unirank: one learned model for search and recommendations.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Engagement data: synthetic logs, importers.", no_args_is_help=True)
app.add_typer(data_app, name="data")

Personalization = Enum("Personalization", {p: p for p in PERSONALIZATION_LEVELS}, type=str)
RankBy = Enum("RankBy", {r: r for r in ("click", "play")}, type=str)
Split = Enum("Split", {s: s for s in ("feature", "fit", "validation", "test")}, type=str)


def parse_tasks(value: str | tuple) -> tuple[str, ...]:
    if isinstance(value, tuple):
        return value
    tasks = tuple(t.strip() for t in value.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise typer.BadParameter(f"unknown task(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(TASKS)}")
    return tasks


def parse_ints(value: str | tuple) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return value
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def dataset_dir(value: str | Path | None) -> Path | None:
    """A directory holding events.parquet (or events/) and entities.parquet; an object-store URL (s3://, gs://)
    is mirrored into a local cache first (UNIRANK_DATA_CACHE_DIR; only new files are fetched again)."""
    if value is None:
        return None
    if is_url(value):
        try:
            value = mirror(str(value))
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot read {value}: {exc}") from exc
    value = Path(value)
    missing = [] if (value / "events.parquet").is_file() or (value / "events").is_dir() else ["events.parquet"]
    missing += [] if (value / "entities.parquet").is_file() else ["entities.parquet"]
    if not value.is_dir() or missing:
        raise typer.BadParameter(f"{value} is not a dataset directory (missing: {', '.join(missing) or 'directory'})")
    return value


def bundle_dir(value: Path) -> Path:
    if not (value / "manifest.json").is_file():
        raise typer.BadParameter(f"no bundle at {value} (manifest.json expected)")
    return value


def user_errors(*kinds: type[Exception]) -> Callable:
    """Errors in what the user gave (a file breaking the schema, an invalid option combination) end the
    command with one line and exit code 2, as a bad argument does, not with a traceback."""

    def wrap(command: Callable) -> Callable:
        @functools.wraps(command)
        def run(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except (SchemaError, *kinds) as exc:
                typer.echo(f"Error: {exc}", err=True)
                raise typer.Exit(2) from None

        return run

    return wrap
