"""Starting the real processes a benchmark or a test needs: a redis-server, a Redis Cluster, uvicorn apps.

`free_port` is re-exported for the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.store.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]


class RedisServer(EmbeddedRedis):
    """A redis-server on a loopback port, keeping nothing on disk; `cpus` pins it (Linux)."""

    def __init__(self, extra_args: tuple[str, ...] = (), cpus: set[int] | None = None):
        super().__init__(tcp=True, extra_args=extra_args)
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self.proc.pid, cpus)

    def stop(self) -> None:
        self.close()


class RedisClusterServer:
    """A Redis Cluster of `masters` redis-servers in cluster mode on loopback ports (no replicas),
    joined by `redis-cli --cluster create`; `url` is the `redis+cluster://` URL of its first node."""

    def __init__(self, masters: int = 3, cpus: set[int] | None = None):
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli missing: install Debian's redis-server package (it ships redis-cli)")
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                # the config file goes in the node's own temporary --dir; the bus port is chosen, not the
                # default port + 10000, past 65535 for any port above 55535
                bus = ("--cluster-port", str(free_port()))
                self.nodes.append(
                    RedisServer(("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *bus))
                )
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
            self._wait_ok(cli)
        except BaseException:
            self.stop()
            raise
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def _wait_ok(self, cli: str, timeout_s: float = 30.0) -> None:
        """Every node sees every slot served (cluster_state:ok) before anyone uses it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [
                subprocess.run([cli, "-p", str(n.port), "cluster", "info"], capture_output=True, text=True).stdout
                for n in self.nodes
            ]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


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
