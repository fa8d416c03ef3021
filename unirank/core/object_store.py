"""Datasets where they live: a local directory, or an object-store URL (`s3://`, `gs://`, anything fsspec
knows), for the log's sink to write and training to read.

Contract: `DatasetLocation(location)` writes files under it so that a reader never sees half of one (a
local file through a rename; an object appears when its upload completes), and reads them back.
`mirror(url, dest)` copies the files under a URL into a local directory and returns it: files already
there with the same size are kept (an export only ever adds partitions, so a second run fetches only the
new ones). Credentials and endpoints come from each store's usual environment (AWS_*,
GOOGLE_APPLICATION_CREDENTIALS), as for bundles.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def is_url(location: str | Path) -> bool:
    text = str(location)
    return "://" in text and not text.startswith("file://")


class DatasetLocation:
    def __init__(self, location: str | Path):
        import fsspec

        self.location = str(location)
        self.fs, root = fsspec.core.url_to_fs(self.location)
        self.root = root.rstrip("/")
        self.local = not is_url(self.location)

    def __str__(self) -> str:
        return self.location

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Writes one file whole; returns its path."""
        path = self.path(*parts)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if not self.local:
            self.fs.pipe_file(path, data)
            return path
        tmp = f"{path}.tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path


def default_cache(url: str) -> Path:
    """Where a dataset URL is mirrored unless told: UNIRANK_DATA_CACHE_DIR (or the temp dir), per URL."""
    base = Path(os.environ.get("UNIRANK_DATA_CACHE_DIR") or Path(tempfile.gettempdir()) / "unirank-data")
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


def _files(fs, root: str) -> Iterator[tuple[str, int]]:
    for path, info in fs.find(root, detail=True).items():
        if info.get("type", "file") == "file":
            yield path, int(info.get("size") or 0)


def mirror(url: str, dest: Path | None = None, progress: bool = True) -> Path:
    import fsspec
    from tqdm import tqdm

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    dest = dest or default_cache(url)
    files = sorted(_files(fs, root))
    if not files:
        raise FileNotFoundError(f"nothing at {url}")
    bar = tqdm(
        total=sum(size for _, size in files), desc=f"fetch {url}", unit="B", unit_scale=True, disable=not progress
    )
    for path, size in files:
        target = dest / path[len(root) :].lstrip("/")
        if not (target.is_file() and target.stat().st_size == size):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            fs.get_file(path, str(tmp))
            os.replace(tmp, target)
        bar.update(size)
    bar.close()
    return dest
