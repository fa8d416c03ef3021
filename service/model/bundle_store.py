"""Where bundles live: a local directory, or an object-store URL (`s3://`, `gs://`, anything fsspec
reads), copied into a local cache directory first.

Contract: `fetch_bundle(location, cache_dir)` returns a local directory whose files match the
manifest's `content_hash`, or raises `BundleMissing` (no bundle there yet) or `BundleInvalid` (not a
bundle, or its files changed). A URL is downloaded into `<cache_dir>/<content_hash>` (once: a verified
copy is reused; concurrent workers download to private temporary directories and rename). Credentials
and endpoints come from the usual environment of each store (AWS_*, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from unirank.core.bundle_files import MANIFEST, content_hash, file_hashes
from unirank.core.features import DENSE_FEATURES
from unirank.core.object_store import is_url

log = logging.getLogger("unirank.bundle_store")


class BundleMissing(FileNotFoundError):
    """Nothing at that location yet (an init container may still be copying it)."""


class BundleInvalid(ValueError):
    """Something is there, but not an intact bundle."""


def fetch_bundle(location: str | Path, cache_dir: str | Path) -> Path:
    location = str(location)
    if not is_url(location):
        path = Path(location.removeprefix("file://"))
        verify(path)
        return path
    return _download(location, Path(cache_dir))


def read_manifest(path: Path) -> dict:
    try:
        present = (path / MANIFEST).is_file() and (path / "model.onnx").is_file()
    except OSError as exc:  # a name too long, a directory not readable: not a place a bundle can be
        raise BundleInvalid(f"cannot read {str(path)[:200]}: {exc.strerror}") from None
    if not present:
        raise BundleMissing(f"no bundle at {path} (manifest.json and model.onnx expected)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleInvalid(f"{path / MANIFEST} is not valid JSON: {exc}") from None
    dense = (manifest.get("features") or {}).get("dense") if isinstance(manifest, dict) else None
    if dense is not None and list(dense) != list(DENSE_FEATURES):
        missing = [f for f in DENSE_FEATURES if f not in dense]
        raise BundleInvalid(
            f"{path} was trained on other dense features than this unirank computes (it lacks {missing}): "
            "retrain it with this version (unirank train; the demo bundle: unirank build-demo, or make clean serve)"
        )
    return manifest


def verify(path: Path) -> dict:
    """The manifest, once every file matches its content hash."""
    manifest = read_manifest(path)
    expected = manifest.get("content_hash")
    if not expected:
        raise BundleInvalid(f"{path / MANIFEST} has no content_hash")
    files = file_hashes(path)
    if content_hash(files) != expected:
        listed = manifest.get("tables") or {}
        changed = sorted(f for f in set(files) | set(listed) if files.get(f) != listed.get(f))
        detail = f" (differing: {', '.join(changed[:5])})" if changed else ""
        raise BundleInvalid(f"the files of {path} do not match its manifest's content hash{detail}")
    return manifest


def _download(url: str, cache_dir: Path) -> Path:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/{MANIFEST}"):
        raise BundleMissing(f"no bundle at {url} ({MANIFEST} not found)")
    manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    digest = manifest.get("content_hash")
    if not digest:
        raise BundleInvalid(f"{url}/{MANIFEST} has no content_hash")
    target = cache_dir / digest
    if target.is_dir():
        try:
            verify(target)
            return target
        except (BundleMissing, BundleInvalid):
            shutil.rmtree(target, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        log.info("downloading bundle %s into %s", url, target)
        fs.get(f"{root}/", str(staging), recursive=True)
        verify(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another worker renamed its verified copy first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
