"""Draining on SIGTERM: the worker keeps serving for `drain_s` while telling everyone it is going.

Contract: `Drain.install()` runs in the lifespan, in the main thread of a process whose SIGTERM handler is
uvicorn's (anything else: nothing is installed). The first SIGTERM makes `active` true — /readyz answers
503 "draining", every response carries `Connection: close`, so keep-alive pools (load balancers, the
frontends' HTTP clients) move off this worker after the request they are in — and `drain_s` later hands the
signal to uvicorn, which stops accepting and lets in-flight requests finish (`graceful_shutdown_s`).
A second SIGTERM hands it over at once. Without this, uvicorn closes idle keep-alive connections at the
signal and a request a client wrote onto one in that instant is lost.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

log = logging.getLogger("unirank.drain")


class Drain:
    def __init__(self, drain_s: float):
        self.drain_s = drain_s
        self.active = False

    def install(self) -> None:
        original = signal.getsignal(signal.SIGTERM)
        if self.drain_s <= 0 or threading.current_thread() is not threading.main_thread():
            return
        if type(getattr(original, "__self__", None)).__module__ != "uvicorn.server":
            return  # not under a uvicorn server (TestClient, an embedding process): its signals are not ours
        loop = asyncio.get_running_loop()

        def handle(sig, frame) -> None:
            if self.active:
                original(sig, frame)
                return
            self.active = True
            log.info("SIGTERM: draining for %.1f s, then stopping", self.drain_s)
            # a signal handler may run while the loop sleeps in its selector: wake it to schedule the hand-over
            loop.call_soon_threadsafe(loop.call_later, self.drain_s, original, sig, frame)

        signal.signal(signal.SIGTERM, handle)

    def closing(self, send):
        """`send` with `Connection: close` added to the response head."""

        async def send_closing(message):
            if message["type"] == "http.response.start":
                message = message | {"headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return send_closing
