"""CPU time the app spends per request of one scenario, called in process through ASGI (no sockets, no
HTTP parser, no load generator sharing the machine), and optionally where it goes.

Contract: starts a Redis of its own, creates the app as `unirank serve` does (`service.api:create_app`,
the bench's no-op endpoint on), runs its lifespan, then calls it with the bench's request bodies of one
POST scenario (`rank_200`, `keystroke_hit`, `keystroke_miss`, or `ceiling`: the keystroke bodies to the
no-op endpoint), 8 at a time, and reports the process's CPU seconds per request (after a warm-up of
1,000) and the requests per inference call. It runs on uvloop, the server's loop. Against
`loadtest.server_cpu` (the real server over HTTP) it leaves out uvicorn and the sockets, so it resolves
changes of a few microseconds inside the app; `--py-spy OUT` also records a py-spy profile (raw stacks).
`--without-model` replaces the onnxruntime call by pseudo-random scores (no ties, the same top-k work):
what the rest of the request costs when the model's call no longer takes the core's caches.

    python -m loadtest.asgi_cpu --bundle artifacts/demo --scenario keystroke_hit --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loadtest.processes import RedisServer
from loadtest.scenarios import Scenarios

SCENARIOS = ("rank_200", "keystroke_hit", "keystroke_miss", "ceiling")


def _bodies(bundle: Path, scenario: str, n: int) -> list[bytes]:
    sc = Scenarios(bundle)
    if scenario == "keystroke_miss":  # every request a key no earlier one used
        return [sc.keystroke_miss(i) for i in range(n)]
    make = sc.keystroke_hit if scenario == "ceiling" else getattr(sc, scenario)
    return [make() for _ in range(500)]


async def _drive(app, path: str, bodies: list[bytes], start: int, count: int, state: dict) -> dict[int, int]:
    statuses: dict[int, int] = {}

    async def one(body: bytes) -> None:
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect

        async def send(message):
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        headers = [(b"host", b"asgi"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": dict(state),
        }
        await app(scope, receive, send)

    for i in range(start, start + count, 8):
        await asyncio.gather(*(one(bodies[(i + j) % len(bodies)]) for j in range(8)))
    return statuses


async def _measure(bundle: Path, scenario: str, requests: int, redis_url: str) -> dict:
    from service.api import create_app
    from service.core.settings import Settings

    app = create_app(Settings(bundle=str(bundle), redis_url=redis_url, bench_endpoints=True))
    state: dict = {}
    startup: asyncio.Queue = asyncio.Queue()
    replies: asyncio.Queue = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, startup.get, replies.put)
    )
    message = await replies.get()
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {message}")
    unirank = state["unirank"]
    while not unirank.ready:
        await asyncio.sleep(0.1)
    bodies = _bodies(bundle, scenario, requests + 1000)
    path = "/bench/noop" if scenario == "ceiling" else "/rank"
    await _drive(app, path, bodies, 0, 1000, state)  # warm-up
    batcher = unirank.bundle.batcher
    calls, scored = (batcher.batches, batcher.requests) if batcher else (0, 0)
    before = time.process_time()
    statuses = await _drive(app, path, bodies, 1000, requests, state)
    cpu = time.process_time() - before
    calls, scored = (batcher.batches - calls, batcher.requests - scored) if batcher else (0, 0)
    await startup.put({"type": "lifespan.shutdown"})
    await replies.get()
    await lifespan
    return {
        "scenario": scenario,
        "requests": requests,
        "statuses": statuses,
        "cpu_us_per_request": cpu / requests * 1e6,
        "requests_per_inference_call": scored / calls if calls else None,
    }


def _without_model() -> None:
    """Every Scorer answers pseudo-random scores instead of calling onnxruntime."""
    import numpy as np

    from service.model.scoring import Scorer

    def score(self, inputs):
        n = len(inputs["cand_ctx"])
        return np.random.default_rng(n).random(n, dtype=np.float32)

    Scorer.score = score


def measure(bundle: Path, scenario: str, requests: int, without_model: bool = False) -> dict:
    import uvloop

    if without_model:
        _without_model()

    redis = RedisServer()
    try:
        return uvloop.run(_measure(bundle, scenario, requests, redis.url))
    finally:
        redis.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    ap.add_argument("--scenario", choices=SCENARIOS, default="keystroke_hit")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--py-spy", type=Path, default=None, help="record a py-spy profile (raw stacks) of the run here")
    ap.add_argument("--without-model", action="store_true", help="pseudo-random scores instead of onnxruntime")
    args = ap.parse_args()
    if args.py_spy is not None:  # the same command under py-spy, which must be installed
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        own = [sys.executable, "-m", "loadtest.asgi_cpu", "--bundle", str(args.bundle), "--scenario", args.scenario]
        cmd = [spy, "record", "-r", "997", "-f", "raw", "-o", str(args.py_spy), "--", *own]
        extra = ["--without-model"] if args.without_model else []
        raise SystemExit(subprocess.call([*cmd, "--requests", str(args.requests), *extra]))
    r = measure(args.bundle, args.scenario, args.requests, args.without_model)
    per_call = r["requests_per_inference_call"]
    print(
        f"{r['scenario']}: {r['cpu_us_per_request']:.1f} us of CPU per request over {r['requests']} requests "
        f"(statuses {r['statuses']}; requests per inference call: {'n/a' if per_call is None else f'{per_call:.1f}'})"
    )
    if set(r["statuses"]) != {200}:
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
