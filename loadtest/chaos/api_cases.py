"""Faults in what clients send: schemathesis over every operation of the OpenAPI document, and hostile bodies."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import orjson

from loadtest.chaos.tools import TOKEN, rss_mb, start_service


def schemathesis_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    server = start_service(bundle, redis_url)
    try:
        st = Path(sys.executable).parent / "st"
        examples = 10 if quick else 100
        cmd = [
            str(st),
            "run",
            f"{server.url}/openapi.json",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "not_a_server_error",
            "-n",
            str(examples),
            "--seed",
            "0",
            "--no-color",
            "--max-time",
            "60" if quick else "300",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=600)
        text = done.stdout + done.stderr
        generated = int(m.group(1)) if (m := re.search(r"(\d+) generated", text)) else 0
        failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", text)) else 0
        return {
            "case": "OpenAPI fuzzing (schemathesis, every operation)",
            "examples_per_operation": examples,
            "generated": generated,
            "server_errors": failed,
            "exit_code": done.returncode,
            "held": done.returncode == 0 and generated > 0 and failed == 0,
            "result": f"{generated} cases, {failed} with a 5xx",
        }
    finally:
        server.stop()


HOSTILE = {
    "invalid UTF-8": (b'{"task": "prequery", "country": "\xff\xfe"}', {4}),
    "10 MB body": (b'{"task": "prequery", "country": "US", "query": "' + b"x" * (10 << 20) + b'"}', {4}),
    "nesting 10,000 deep": (b"[" * 10_000 + b"]" * 10_000, {4}),
    "100k candidates": (
        orjson.dumps({"task": "prequery", "country": "US", "candidates": [f"e{i}" for i in range(100_000)]}),
        {4},
    ),
    "k = 10^9": (b'{"task": "prequery", "country": "US", "k": 1000000000}', {4}),
    "1 MB id": (orjson.dumps({"task": "prequery", "country": "US", "user_id": "u" * (1 << 20)}), {4}),
    "NUL in ids": (orjson.dumps({"task": "prequery", "country": "US", "candidates": ["e000001", "e\u0000x"]}), {4}),
    "emoji ids (valid)": (orjson.dumps({"task": "prequery", "country": "US", "candidates": ["🎬", "e000001"]}), {2}),
}


def hostile_case(bundle: Path, redis_url: str, quick: bool, work: Path) -> dict:
    server = start_service(bundle, redis_url)
    try:
        before = rss_mb(server.proc.pid)
        rounds = 3 if quick else 20
        statuses: dict[str, set[int]] = {}
        slowest = 0.0
        for _ in range(rounds):
            for name, (body, _) in HOSTILE.items():
                started = time.perf_counter()
                r = server.client.post("/rank", content=body, headers={"content-type": "application/json"})
                slowest = max(slowest, time.perf_counter() - started)
                statuses.setdefault(name, set()).add(r.status_code)
        growth = rss_mb(server.proc.pid) - before
        ok = all({s // 100 for s in statuses[n]} <= want for n, (_, want) in HOSTILE.items())
        return {
            "case": "hostile bodies",
            "statuses": {n: sorted(s) for n, s in statuses.items()},
            "rounds": rounds,
            "rss_growth_mb": round(growth, 1),
            "slowest_ms": round(slowest * 1000, 1),
            "held": ok and growth < 200,
            "result": ", ".join(f"{n}: {'/'.join(map(str, sorted(s)))}" for n, s in statuses.items())
            + f"; RSS +{growth:.0f} MB after {rounds} rounds; slowest {slowest * 1000:.0f} ms",
        }
    finally:
        server.stop()
