"""Helpers the tests share (fixtures stay in conftest): a live service process, request shortcuts,
metric scraping, a model spec for the feature code, and Debian packages installed when missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from loadtest.processes import AppServer
from unirank.core.features import DENSE_FEATURES
from unirank.core.spec import ModelOptions, ModelSpec, Vocabulary
from unirank.core.tables import FeatureTables


def shuffled_partitioned_copy(data_dir: Path, out: Path, seed: int = 0, rows_per_file: int = 5_000) -> Path:
    """The dataset at data_dir with its events shuffled and written as a hive-partitioned directory
    (`events/date=YYYY-MM-DD/*.parquet`, small files), the layout `unirank logs sink` writes."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    events = pq.read_table(data_dir / "events.parquet")
    events = events.take(np.random.default_rng(seed).permutation(events.num_rows))
    day = pc.strftime(events.column("timestamp"), format="%Y-%m-%d")
    ds.write_dataset(
        events.append_column("date", day),
        out / "events",
        format="parquet",
        partitioning=["date"],
        partitioning_flavor="hive",
        max_rows_per_file=rows_per_file,
        max_rows_per_group=rows_per_file,
    )
    pq.write_table(pq.read_table(data_dir / "entities.parquet"), out / "entities.parquet")
    return out


def debian_binaries(found: Callable[[], dict[str, str | None]], packages: list[str]) -> dict[str, str | None]:
    """`found()` (binary name -> path or None) after installing `packages` with apt-get when a binary is
    missing and this runs as root with apt-get (CI machines start without them); whatever could not be
    installed stays None, for the caller to fail or skip saying which package it needs."""
    if all(found().values()) or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found()
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)
    return found()


class LiveServer(AppServer):
    """The real service in its own uvicorn process (one replica: its workers share a replica id). Each
    server has its own model list and routing in Redis unless `extra_env` names a shared UNIRANK_CONTROL_KEY."""

    def __init__(self, bundle: Path | str, redis_url: str, extra_env: dict | None = None, workers: int = 1):
        env = {
            "UNIRANK_BUNDLE": str(bundle),
            "REDIS_URL": redis_url,
            "UNIRANK_BUNDLE_POLL_S": "0.2",
            "UNIRANK_REPLICA_ID": f"test-{uuid.uuid4().hex[:8]}",
            "UNIRANK_CONTROL_KEY": f"ur:control:test:{uuid.uuid4().hex[:8]}",
        }
        if workers > 1:  # as `unirank serve --workers N` sets up: one /metrics page, the worker count known
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="unirank-test-prom-")
            env["UNIRANK_WORKERS"] = str(workers)
        super().__init__("service.api:create_app", env | (extra_env or {}), workers=workers)


def rank(client: httpx.Client, **body) -> dict:
    r = client.post("/rank", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def ranked_ids(client: httpx.Client, **body) -> list[str]:
    return [i["entity_id"] for i in rank(client, **body)["items"]]


def fields_of(response: httpx.Response) -> list[str]:
    """The `field` of every problem in an error body."""
    return [d["field"] for d in response.json()["detail"]]


def metric(client: httpx.Client, name: str, labels: dict[str, str]) -> float:
    """One sample of the /metrics page (0 when absent)."""
    text = client.get("/metrics").text
    pattern = re.escape(name) + r"\{" + ",".join(f'{k}="{re.escape(v)}"' for k, v in labels.items()) + r"\} ([0-9.e+]+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


def spec_for(tables: FeatureTables, personalization: str = "full", **options) -> ModelSpec:
    """A model spec over these tables (unit dense statistics), with the given options."""
    vocabulary = Vocabulary(
        len(tables.countries) - 1,
        tables.n_clusters,
        tables.n_entities,
        len(tables.user_ids) - 1,
        len(tables.genres) - 1,
    )
    n = len(DENSE_FEATURES)
    return ModelSpec(vocabulary, [0.0] * n, [1.0] * n, personalization, options=ModelOptions(**options))


def s3_client(env: dict):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
