"""`unirank models ...`: the roll-out API for operators (list, load, unload, route) over HTTP."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from unirank.cli.app import app

models_app = typer.Typer(
    help="Models of a running service: list, load, unload, route (admin token).", no_args_is_help=True
)
app.add_typer(models_app, name="models")

Url = Annotated[str, typer.Option(envvar="UNIRANK_URL", help="The service [env UNIRANK_URL]")]
Token = Annotated[str, typer.Option(envvar="UNIRANK_ADMIN_TOKEN", help="Admin token [env UNIRANK_ADMIN_TOKEN]")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _call(method: str, url: str, path: str, token: str, body: dict | None = None, timeout: float = 300.0) -> dict:
    import httpx

    try:
        r = httpx.request(
            method, url.rstrip("/") + path, json=body, timeout=timeout, headers={"authorization": f"Bearer {token}"}
        )
    except httpx.HTTPError as exc:
        typer.echo(f"Error: {url} did not answer: {exc}", err=True)
        raise typer.Exit(1) from None
    payload = r.json() if r.headers.get("content-type", "").startswith("application/json") else {"text": r.text}
    if r.status_code >= 400:
        problems = payload.get("detail") or [{"message": r.text}]
        for p in problems:
            where = f"{p['field']}: " if p.get("field") else ""
            typer.echo(f"Error ({r.status_code}): {where}{p.get('message')}", err=True)
        raise typer.Exit(1)
    return payload


def _show(payload: dict) -> None:
    typer.echo(json.dumps(payload, indent=2))


@models_app.command("list")
def list_models(url: Url = DEFAULT_URL, token: Token = "") -> None:
    """The models the service holds, the routing, and which worker holds what."""
    payload = _call("GET", url, "/admin/models", token)
    typer.echo(
        "| name | version | personalization | tasks | loaded at | requests | routed |\n|---|---|---|---|---|---|---|"
    )
    for m in payload["models"]:
        typer.echo(
            f"| {m['name']} | {m['version']} | {m['personalization']} | {','.join(m['tasks'])} | "
            f"{m['loaded_at']} | {m['requests_served']} | {'yes' if m['routed'] else ''} |"
        )
    typer.echo("routing: " + json.dumps(payload["routing"]))


@models_app.command("load")
def load(
    name: Annotated[str, typer.Argument(help="The model's name (letters, digits, . _ -)")],
    path: Annotated[str, typer.Argument(help="Bundle directory on the service's machine, or an s3:// / gs:// URL")],
    url: Url = DEFAULT_URL,
    token: Token = "",
) -> None:
    """Load, check and warm up a bundle on every worker and replica; returns when this replica holds it."""
    _show(_call("POST", url, "/admin/models", token, {"name": name, "path": path}))


@models_app.command("unload")
def unload(name: str, url: Url = DEFAULT_URL, token: Token = "") -> None:
    """Unload a model the routing does not use."""
    _show(_call("DELETE", url, f"/admin/models/{name}", token))


def _variant(value: str) -> dict:
    model, _, share = value.partition("=")
    try:
        return {"model": model, "share": float(share)}
    except ValueError:
        raise typer.BadParameter(f"expected MODEL=SHARE (e.g. b=0.5), got {value!r}") from None


@models_app.command("route")
def route(
    default: Annotated[str, typer.Option(help="The model every request outside an experiment gets")] = "default",
    experiment: Annotated[str | None, typer.Option(help="An experiment's name (with --variant)")] = None,
    mode: Annotated[str, typer.Option(help="ab | interleave")] = "ab",
    unit: Annotated[str, typer.Option(help="user | request: what an A/B assignment sticks to")] = "user",
    variant: Annotated[list[str] | None, typer.Option(help="MODEL=SHARE, repeated; shares sum to 1")] = None,
    shadow: Annotated[str | None, typer.Option(help="A model that scores a copy of served requests")] = None,
    url: Url = DEFAULT_URL,
    token: Token = "",
) -> None:
    """Set the routing: the default model, an A/B or interleaved experiment, a shadow."""
    routing: dict = {"default": default, "experiment": None, "shadow": shadow}
    if experiment:
        routing["experiment"] = {
            "name": experiment,
            "mode": mode,
            "unit": unit,
            "variants": [_variant(v) for v in variant or []],
        }
    _show(_call("PUT", url, "/admin/routing", token, routing))


@models_app.command("routing")
def show_routing(url: Url = DEFAULT_URL, token: Token = "") -> None:
    """The routing in force."""
    _show(_call("GET", url, "/admin/routing", token))
