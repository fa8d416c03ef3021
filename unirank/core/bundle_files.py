"""The bundle's files and their content hash: what export writes into the manifest and what the service
checks before it loads a bundle (a copy that changed on the way, or on disk, is refused).

Contract: `content_hash(root)` hashes every file below `root` except `manifest.json` (path and SHA-256
of each, in sorted order); a bundle is intact when it equals the manifest's `content_hash`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST = "manifest.json"


def file_hashes(root: Path | str) -> dict[str, str]:
    """SHA-256 of every file below root but the manifest, by relative path."""
    root = Path(root)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
        out[path.relative_to(root).as_posix()] = digest.hexdigest()
    return out


def content_hash(files: dict[str, str]) -> str:
    total = hashlib.sha256()
    for name, digest in sorted(files.items()):
        total.update(f"{name}:{digest}\n".encode())
    return total.hexdigest()
