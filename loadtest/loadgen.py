"""A low-overhead closed-loop HTTP load generator, run in its own process by the benchmark.

C keep-alive connections each send the next body as soon as the previous answer arrived, for a fixed
time, after a warm-up. Plain asyncio streams on uvloop writing pre-encoded HTTP/1.1 requests: a
fraction of what an HTTP client library or locust costs per request, so a one-core generator can
outrun a one-core server.

    python -m loadtest.loadgen URL PATH BODIES.jsonl --concurrency 8 --duration 10 --warmup 2 --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import numpy as np


def _requests(host: str, path: str, bodies: list[bytes]) -> list[bytes]:
    """POSTs of the bodies to path; with path "GET", each line is a target to GET (`/search?q=...`)."""
    if path == "GET":
        return [b"GET " + target + f" HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for target in bodies]
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: "
    return [head.encode() + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]


async def _connection(host, port, requests, offset, step, warm_at, stop_at, latencies, failures, ok_status):
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            writer.write(requests[i % len(requests)])
            i += step
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
            if length:
                await reader.readexactly(length)
            if started >= warm_at:
                latencies.append(time.perf_counter() - started)
                if status not in ok_status:
                    failures.append(status)
    finally:
        writer.close()


async def run(
    url: str, path: str, bodies: list[bytes], concurrency: int, duration: float, warmup: float, ok_status=(200, 202)
) -> dict:
    parts = urlsplit(url)
    requests = _requests(parts.netloc, path, bodies)
    latencies: list[float] = []
    failures: list[int] = []
    now = time.perf_counter()
    warm_at, stop_at = now + warmup, now + warmup + duration
    tasks = [
        _connection(
            parts.hostname, parts.port, requests, c, concurrency, warm_at, stop_at, latencies, failures, ok_status
        )
        for c in range(concurrency)
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = len(failures) + sum(isinstance(r, Exception) for r in results)
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "rps": len(latencies) / duration,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
        "error_statuses": sorted(set(failures)),
        "concurrency": concurrency,
        "duration_s": duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("path", help='the path to POST to, or "GET": each line of BODIES is a target to GET')
    parser.add_argument("bodies", help="JSON-lines file, one request body a line (or one target, with GET)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.bodies, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args.url, args.path, bodies, args.concurrency, args.duration, args.warmup))
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
