"""Against live processes: a real Prometheus scraping a running unirank under load (the alert rules
loaded, the dashboard's queries answered), and a graceful SIGTERM that lets in-flight requests finish.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from loadtest.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
TASK_BODIES = {
    "search": {"task": "search", "country": "US", "query": "th", "personalization": "cluster"},
    "prequery": {"task": "prequery", "country": "US", "personalization": "cluster"},
    "more_like_this": {
        "task": "more_like_this",
        "country": "US",
        "source_entity_id": "e000001",
        "personalization": "none",
    },
}


@pytest.fixture(scope="module")
def prometheus(prometheus_binaries, server, tmp_path_factory):
    """Debian's prometheus scraping the live server every second, with unirank's alert rules loaded."""
    where = tmp_path_factory.mktemp("prometheus")
    alerts = where / "alerts.yml"
    alerts.write_text((ROOT / "deploy/prometheus/alerts.yml").read_text())
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(alerts)],
        "scrape_configs": [{"job_name": "unirank", "static_configs": [{"targets": [server.url.split("//")[1]]}]}],
    }
    (where / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            prometheus_binaries["prometheus"],
            f"--config.file={where / 'prometheus.yml'}",
            f"--storage.tsdb.path={where / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    if not _answers_ok(client, "/-/ready"):
        proc.kill()
        pytest.fail("prometheus did not become ready")
    yield client
    client.close()
    proc.terminate()
    proc.wait(20)


def _answers_ok(client: httpx.Client, path: str, timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if client.get(path).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def _query(prom: httpx.Client, expr: str) -> list[dict]:
    body = prom.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_per_task_quantiles_under_load(prometheus, server):
    buckets = 'rate(unirank_request_duration_seconds_bucket{endpoint="/rank"}[30s])'
    p99 = f"histogram_quantile(0.99, sum by (le, task) ({buckets}))"
    deadline = time.time() + 45
    series: dict[str, float] = {}
    with httpx.Client(base_url=server.url, timeout=10) as c:
        while time.time() < deadline:
            for i in range(20):  # a short load: every task, cache misses and hits
                for body in TASK_BODIES.values():
                    assert c.post("/rank", json=body | {"k": 5 + i}).status_code == 200
            assert c.post("/rank", json={"task": "nope"}).status_code == 422  # counted as a validation error
            series = {r["metric"]["task"]: float(r["value"][1]) for r in _query(prometheus, p99)}
            if series.keys() >= TASK_BODIES.keys() and all(v == v for v in series.values()):  # NaN until two scrapes
                break
            time.sleep(1)
    assert series.keys() >= TASK_BODIES.keys(), series
    for task, seconds in series.items():
        assert 0 < seconds < 10, (task, seconds)
    up = _query(prometheus, 'up{job="unirank"}')
    assert up and up[0]["value"][1] == "1"
    # every query of the Grafana dashboard is valid PromQL and finds real series
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/unirank.json").read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "30s")
            if panel["title"].startswith(("Events", "Shadow")) or "cache_layer" in expr:
                continue  # no /events or shadow in this load; the cache layer series appear with the first hit
            if not _query(prometheus, expr):
                empty.append((panel["title"], expr))
    assert not empty, empty
    # the alert rules loaded and evaluate without error
    groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    declared = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    assert sorted(r["name"] for r in rules) == sorted(r["alert"] for g in declared for r in g["rules"]), rules
    assert all(r["health"] == "ok" for r in rules), rules


def _raw_request(port: int, body: bytes, split_at: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:split_at])
    return sock


def test_sigterm_lets_in_flight_requests_finish(bundle_dir, redis_url):
    """`unirank serve` on SIGTERM: drains (readyz 503, answers that close their connection), then stops
    accepting, answers the request it is in the middle of, and exits."""
    port = free_port()
    env = os.environ | {"REDIS_URL": redis_url, "UNIRANK_GRACEFUL_SHUTDOWN_S": "15", "UNIRANK_DRAIN_S": "1.5"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unirank.cli",
            "serve",
            "--bundle",
            str(bundle_dir),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            if not _answers_ok(c, "/readyz"):
                pytest.fail("server did not become ready")
        body = json.dumps(TASK_BODIES["search"] | {"k": 7}).encode()
        in_flight = _raw_request(port, body, split_at=len(body) // 2)  # headers and half the body sent
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:  # draining: still answering
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["reason"].startswith("draining"), ready.text
            ranked = c.post("/rank", content=body, headers={"content-type": "application/json"})
            assert ranked.status_code == 200 and ranked.headers["connection"] == "close"
        time.sleep(1.7)  # past the drain
        assert proc.poll() is None, "the server exited with a request in flight"
        with pytest.raises(OSError):  # no longer accepting new connections
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        in_flight.sendall(body[len(body) // 2 :])
        response = b""
        while chunk := in_flight.recv(65536):
            response += chunk
            if b"\r\n\r\n" in response and response.endswith(b"}"):
                break
        in_flight.close()
        status_line, _, rest = response.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 200 OK", response[:300]
        payload = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert len(payload["items"]) == 7
        assert proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        if proc.poll() is None:
            proc.kill()


def test_buffered_observations_land_in_the_buckets_prometheus_client_would_pick():
    """`service.ops.metrics.buffered`: values on, just below and just above every bound, and far out, give the
    same bucket counts and count as prometheus-client's own observe (the sum up to rounding); a scrape
    flushes first."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from service.ops.metrics import LATENCY_BUCKETS, buffered

    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
    later = Histogram("later_seconds", "b", ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
    values = [0.0, 5.0, 1e9] + [b * f for b in LATENCY_BUCKETS for f in (0.999, 1.0, 1.001)]
    buffer = buffered(later.labels(stage="s"))
    for v in values:
        direct.labels(stage="s").observe(v)
        buffer.observe(v)
    assert buffer.values  # not in the histogram yet ...
    buffer.flush()
    assert not buffer.values  # ... now it is

    def samples(name):
        text = generate_latest(registry).decode()
        return {
            line.split(" ")[0].replace(name, ""): float(line.split(" ")[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith(f"{name}_created")
        }

    got, want = samples("later_seconds"), samples("direct_seconds")
    assert set(got) == set(want) and len(want) == len(LATENCY_BUCKETS) + 3  # buckets, +Inf, count, sum
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12) if key.startswith("_sum") else got[key] == value
