"""Bundles where they live: s3:// URLs against a real S3-compatible server (moto in server mode), for a
model loaded at run time and for the start-up bundle; a corrupted copy is refused by its content hash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import LiveServer, fields_of, s3_client

TOKEN = "store-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory, bundle_dir, second_bundle_dir, s3_env):
    """The two bundles, a corrupted copy, and the environment a service needs to reach them."""
    env = dict(s3_env)
    client = s3_client(env)
    client.create_bucket(Bucket="models")

    def upload(root: Path, prefix: str, corrupt: str | None = None) -> str:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                if path.name == corrupt:
                    data = data[:-64] + b"\0" * 64
                client.put_object(Bucket="models", Key=f"{prefix}/{path.relative_to(root).as_posix()}", Body=data)
        return f"s3://models/{prefix}"

    urls = {
        "a": upload(bundle_dir, "a/v1"),
        "b": upload(second_bundle_dir, "b/v1"),
        "corrupted": upload(second_bundle_dir, "b/v2", corrupt="model.onnx"),
    }
    env["UNIRANK_BUNDLE_CACHE_DIR"] = str(tmp_path_factory.mktemp("bundle-cache"))
    yield urls, env


def test_the_start_up_bundle_and_a_loaded_model_come_from_s3(s3, redis_url):
    urls, env = s3
    live = LiveServer(urls["a"], redis_url, env | {"UNIRANK_ADMIN_TOKEN": TOKEN})
    try:
        live.wait_ready()
        assert live.client.get("/model").json()["bundle"].startswith(env["UNIRANK_BUNDLE_CACHE_DIR"])
        r = live.client.post("/admin/models", json={"name": "b", "path": urls["b"]}, headers=AUTH)
        assert r.status_code == 201 and r.json()["path"] == urls["b"], r.text
        assert live.client.put("/admin/routing", json={"default": "b"}, headers=AUTH).status_code == 200
        out = live.client.post("/rank", json={"task": "search", "country": "US", "query": "th"}).json()
        assert out["model"] == "b" and out["items"]
        cached = sorted(os.listdir(env["UNIRANK_BUNDLE_CACHE_DIR"]))
        assert len([c for c in cached if not c.startswith(".")]) == 2  # one verified copy per content hash
    finally:
        live.stop()


def test_a_corrupted_or_missing_object_is_refused(s3, redis_url, tmp_path):
    urls, env = s3
    # a cache of its own: the cache is by content hash, so a verified copy of b (whose manifest the corrupted
    # upload shares) would be reused without a download, rightly
    live = LiveServer(
        urls["a"], redis_url, env | {"UNIRANK_ADMIN_TOKEN": TOKEN, "UNIRANK_BUNDLE_CACHE_DIR": str(tmp_path)}
    )
    try:
        live.wait_ready()
        r = live.client.post("/admin/models", json={"name": "bad", "path": urls["corrupted"]}, headers=AUTH)
        assert r.status_code == 422 and fields_of(r) == ["path"] and "content hash" in r.text, r.text
        r = live.client.post("/admin/models", json={"name": "bad", "path": "s3://models/nothing/here"}, headers=AUTH)
        assert r.status_code == 422 and "no bundle" in r.text
        names = [m["name"] for m in live.client.get("/admin/models", headers=AUTH).json()["models"]]
        assert names == ["default"]
    finally:
        live.stop()
