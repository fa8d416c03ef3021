"""Starting the real processes a benchmark or a test needs: a redis-server and uvicorn apps.

`free_port` is re-exported for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]


class RedisServer(EmbeddedRedis):
    """A redis-server on a loopback port, keeping nothing on disk; `cpus` pins it (Linux)."""

    def __init__(self, extra_args: tuple[str, ...] = (), cpus: set[int] | None = None):
        super().__init__(tcp=True, extra_args=extra_args)
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self.proc.pid, cpus)

    def stop(self) -> None:
        self.close()


class AppServer:
    """A uvicorn process serving `app` (an import string of a factory); `cpus` pins it (Linux)."""

    def __init__(
        self, app: str, env: dict[str, str], cpus: set[int] | None = None, log_level: str = "warning", workers: int = 1
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        full_env = inherited | env
        self.env = env
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus and hasattr(os, "sched_setaffinity") else None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--factory",
                "--port",
                str(self.port),
                "--log-level",
                log_level,
                "--no-access-log",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env=full_env,
            preexec_fn=preexec,
        )
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
