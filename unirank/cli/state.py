"""`unirank redis ...`: the service's state in Redis (upgrades of its key layout)."""

from __future__ import annotations

from typing import Annotated

import typer

from unirank.cli.app import app

redis_app = typer.Typer(help="The service's Redis state.", no_args_is_help=True)
app.add_typer(redis_app, name="redis")


@redis_app.command("migrate-keys")
def migrate(
    redis_url: Annotated[
        str, typer.Option("--redis", envvar="REDIS_URL", help="The service's Redis [env REDIS_URL]")
    ] = "redis://127.0.0.1:6379/0",
) -> None:
    """Move users' histories and counters to the hash-tagged key names (`ur:user:{u:<id>}:hist|cnt`) that
    this version reads; run once after upgrading from a version that wrote `ur:hist:<id>`. Safe while the
    service runs, and to run again."""
    from tqdm import tqdm

    from unirank.core.redis_url import is_cluster
    from unirank.loop.migrate_keys import migrate_keys
    from unirank.loop.redis_client import redis_client

    if is_cluster(redis_url):
        typer.echo("Error: a Redis Cluster never held the old key names; nothing to move", err=True)
        raise typer.Exit(1)
    with tqdm(desc="keys", unit="key") as bar:
        moved = migrate_keys(redis_client(redis_url), bar.update)
    typer.echo(f"moved {moved['histories']} histories and {moved['counters']} counter hashes")
