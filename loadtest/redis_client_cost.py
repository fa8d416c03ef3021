"""What one request-path Redis read costs the worker's CPU: the service's client one command at a time and
8 at once, each plain, auto-pipelined (`service.store.autopipeline`) and through the fast reads
(`service.store.fast_reads`, what the service uses on one server).

Contract: starts its own redis-server (on the second core where there is one; the client process on the
first), reads a user's history (LRANGE of 20 entries, what /rank with `full` does) `--n` times per way,
and prints the client process's CPU microseconds per command (user + system: the figure that moves least
on a shared machine), the fastest of `--repeats` runs. `--out` also writes JSON.

    python -m loadtest.redis_client_cost
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from loadtest.bench import _cpus
from loadtest.processes import RedisServer
from service.store.redis_client import connect
from unirank.core.markdown import markdown_table

WAYS = (
    "one at a time",
    "one at a time, auto-pipelined",
    "one at a time, fast reads",
    "8 at once",
    "8 at once, auto-pipelined",
    "8 at once, fast reads",
)


async def _measure(url: str, n: int, repeats: int) -> dict[str, float]:
    keys = [f"ur:h:{{bench-{i}}}" for i in range(8)]
    out = {}
    for way in WAYS:
        plain = way.endswith(("at a time", "at once"))
        client = connect(url, 1.0, 64, auto_pipeline=not plain, fast_reads=way.endswith("fast reads"))
        for key in keys:
            await client.delete(key)
            await client.lpush(key, *[f"e{j}|1".encode() for j in range(20)])
        runs = []
        for _ in range(repeats):
            started = time.process_time()
            for _ in range(n // 8):
                if way.startswith("one at a time"):
                    for key in keys:
                        await client.lrange(key, 0, 19)
                else:
                    await asyncio.gather(*(client.lrange(key, 0, 19) for key in keys))
            runs.append((time.process_time() - started) / (n // 8 * 8) * 1e6)
        out[way] = min(runs)
        await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    client_cpus, redis_cpus = _cpus()
    redis = RedisServer(cpus=redis_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    try:
        import uvloop

        result = uvloop.run(_measure(redis.url, args.n, args.repeats))
    finally:
        redis.stop()
    rows = [(way, f"{us:.1f}") for way, us in result.items()]
    print(markdown_table(("LRANGE of a 20-entry history", "client CPU µs per command"), rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
