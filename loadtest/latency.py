"""Single-request latency: N sequential calls per scenario against a running service (p50/p99)."""

from __future__ import annotations

import time

import httpx
import numpy as np

from loadtest.scenarios import Scenarios


def sequential_latency(url: str, scenarios: Scenarios, n: int = 1000) -> dict[str, dict]:
    out = {}
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=url, timeout=10) as client:
        plans = {
            "cache_hit": lambda i: scenarios.keystroke_hit(),
            "cache_miss": scenarios.keystroke_miss,
            "candidates_200": lambda i: scenarios.rank_200(),
        }
        for name, body_of in plans.items():
            bodies = [body_of(i) for i in range(n)]
            for b in bodies[:20]:  # warm-up (and, for hits, fill the cache)
                client.post("/rank", content=b, headers=headers)
            if name == "cache_miss":
                bodies = [body_of(i + 10_000_000) for i in range(n)]
            took, server = [], []
            for b in bodies:
                t = time.perf_counter()
                r = client.post("/rank", content=b, headers=headers)
                took.append(time.perf_counter() - t)
                r.raise_for_status()
                server.append(float(r.headers["server-timing"].rsplit("total;dur=", 1)[1]))
            ms = np.array(took) * 1000
            out[name] = {
                "n": n,
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "server_p50_ms": float(np.percentile(server, 50)),
                "server_p99_ms": float(np.percentile(server, 99)),
            }
    return out
