"""Serving jobs: serve, latency."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unirank.cli.app import app, bundle_dir


@app.command()
def serve(
    bundle: Annotated[Path | None, typer.Option(help="Bundle directory [env UNIRANK_BUNDLE]")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [env UNIRANK_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env UNIRANK_PORT]")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes [env UNIRANK_WORKERS]")] = None,
    log_level: str = "info",
) -> None:
    """Serve a bundle over HTTP (uvicorn with uvloop and httptools). Without REDIS_URL, an embedded Redis.

    Options left out come from the settings (UNIRANK_* environment variables). On SIGTERM the server stops
    accepting connections and lets in-flight requests finish for UNIRANK_GRACEFUL_SHUTDOWN_S.
    """
    import os
    import tempfile

    import uvicorn

    from service.core.settings import Settings

    settings = Settings()
    bundle, host = bundle or Path(settings.bundle), host or settings.host
    port, workers = port or settings.port, workers or settings.workers
    if not (bundle / "manifest.json").is_file():
        where = bundle.resolve()
        typer.echo(f"warning: no bundle at {where} yet; /readyz answers 503 until one appears there", err=True)
    os.environ["UNIRANK_BUNDLE"] = str(bundle)
    os.environ["UNIRANK_WORKERS"] = str(workers)  # a worker waiting on its replica knows how many to wait for
    os.environ.setdefault("UNIRANK_REPLICA_ID", settings.replica_id)  # shared by this process's workers
    embedded = None
    if workers > 1:
        if not (os.environ.get("REDIS_URL") or os.environ.get("UNIRANK_REDIS_URL")):
            from service.store.redis_server import EmbeddedRedis

            embedded = EmbeddedRedis()  # one server shared by every worker
            os.environ["REDIS_URL"] = embedded.url
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="unirank-prom-"))
    try:
        uvicorn.run(
            "service.api:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level=log_level,
            timeout_graceful_shutdown=settings.graceful_shutdown_s,
            timeout_keep_alive=settings.keep_alive_s,
        )
    finally:
        if embedded:
            embedded.close()


@app.command()
def latency(
    bundle: Annotated[
        Path, typer.Option(help="The bundle the service runs (for realistic request bodies)", callback=bundle_dir)
    ] = Path("artifacts/demo"),
    url: str = "http://127.0.0.1:8000",
    n: Annotated[int, typer.Option(min=1)] = 1000,
) -> None:
    """Single-request latency (p50/p99 over N sequential calls): cache hit, cache miss, 200 candidates."""
    from loadtest.latency import sequential_latency
    from loadtest.scenarios import Scenarios

    result = sequential_latency(url, Scenarios(bundle), n)
    typer.echo("| scenario | n | p50 ms | p99 ms | server p50 ms | server p99 ms |\n|---|---|---|---|---|---|")
    for name, r in result.items():
        cells = [r["p50_ms"], r["p99_ms"], r["server_p50_ms"], r["server_p99_ms"]]
        typer.echo(f"| {name} | {r['n']} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
