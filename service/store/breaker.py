"""A circuit breaker in front of Redis: after repeated failures the worker stops calling Redis for a while
and serves without it, instead of paying a socket timeout on every call.

Contract: `async with breaker:` around a Redis call. Closed: calls go through; `failures` consecutive
failures to reach Redis (connection errors, timeouts; an error reply such as NOSCRIPT is an answer, not
a failure) open it. Open: entering raises `BreakerOpen` at once (a `redis` ConnectionError,
so the callers' existing handling — degrade, or 503 for writes — applies) for `open_s` seconds. Then
half-open: one call goes through as a probe (others still fail fast); its success closes the breaker,
its failure opens it again. `state` is what /readyz reports; `unirank_redis_breaker_state` (0 closed, 1
half-open, 2 open) and `unirank_redis_breaker_transitions_total{to}` are the metrics.
"""

from __future__ import annotations

import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.ops.metrics import BREAKER_STATE, BREAKER_TRANSITIONS

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)  # what says Redis is down, slow or away
_LEVEL = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class BreakerOpen(RedisConnectionError):
    """Redis is considered down: the call was not attempted."""


class CircuitBreaker:
    def __init__(self, failures: int = 5, open_s: float = 5.0, clock=time.monotonic):
        self.threshold = max(1, failures)
        self.open_s = open_s
        self.clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._probing = False
        BREAKER_STATE.set(0)

    def _to(self, state: str) -> None:
        if state != self.state:
            self.state = state
            BREAKER_STATE.set(_LEVEL[state])
            BREAKER_TRANSITIONS.labels(to=state).inc()

    async def __aenter__(self) -> None:
        if self.state == OPEN:
            if self.clock() - self.opened_at < self.open_s:
                raise BreakerOpen("Redis circuit breaker open")
            self._to(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self._probing:
                raise BreakerOpen("Redis circuit breaker half-open: a probe is in flight")
            self._probing = True

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        probe, self._probing = self._probing, False
        if exc is None or isinstance(exc, ResponseError):  # Redis answered (an error reply is an answer)
            self.consecutive_failures = 0
            self._to(CLOSED)
        elif isinstance(exc, UNREACHABLE) and not isinstance(exc, BreakerOpen):
            self.consecutive_failures += 1
            if probe or self.consecutive_failures >= self.threshold:
                self.opened_at = self.clock()
                self._to(OPEN)
        return False
