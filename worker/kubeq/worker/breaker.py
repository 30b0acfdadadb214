"""A circuit breaker for Redis calls: after N consecutive failures stop hammering Redis.

closed -> (N failures) -> open -> (jittered backoff elapsed) -> half-open: one probe at a
time -> success closes, failure re-opens with a longer backoff. Every loop of the worker
(claim, heartbeat, settle, maintenance) shares one breaker, so an outage costs a few
probes per second in total rather than a storm of reconnects.

Calls go through `attempt()`, which reports every outcome itself: a probe whose caller
forgot to report (or was cancelled) would hold the breaker half-open and starve every
other loop, heartbeats included, until leases expire.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import redis.exceptions

from kubeq.protocol import ConnectionFailed
from kubeq.protocol import errors as protocol_errors

State = Literal["closed", "open", "half_open"]

#: errors that mean "Redis is not there right now", as opposed to a refused request
TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionFailed,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.OutOfMemoryError,  # Redis refuses writes until memory frees up
    OSError,
    protocol_errors.RedisOutOfMemory,
)


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 3,
        base_seconds: float = 0.1,
        max_seconds: float = 5.0,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base = base_seconds
        self.max = max_seconds
        self.rng = rng or random.Random()
        self.clock = clock
        self.state: State = "closed"
        self.failures = 0  # consecutive
        self.opened = 0  # consecutive openings: the backoff exponent
        self.retry_at = 0.0
        self.last_success = clock()
        self._probe_until = 0.0

    def backoff(self) -> float:
        """Equal jitter: never zero (no retry storm), never above the cap."""
        ceiling: float = min(self.max, self.base * 2 ** min(self.opened - 1, 30))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def record_success(self) -> None:
        self.failures = 0
        self.opened = 0
        self.state = "closed"
        self.last_success = self.clock()

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.opened += 1
            self.state = "open"
            self.retry_at = self.clock() + self.backoff()

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one probe until it reports."""
        if self.state == "closed":
            return True
        now = self.clock()
        if self.state == "open":
            if now < self.retry_at:
                return False
            self.state = "half_open"
            self._probe_until = now + max(self.max, 1.0)
            return True
        # A probe that never reports back (its caller was cancelled) must not wedge us.
        if now >= self._probe_until:
            self._probe_until = now + max(self.max, 1.0)
            return True
        return False

    def delay(self) -> float:
        """Seconds until `allow()` may say yes (0 when it would now)."""
        if self.state == "open":
            return max(0.0, self.retry_at - self.clock())
        return 0.0 if self.state == "closed" else 0.05

    def probe_free(self) -> bool:
        """Could a call go out now (without taking a turn)?"""
        now = self.clock()
        if self.state == "open":
            return now >= self.retry_at
        return self.state == "closed" or now >= self._probe_until

    async def _poll(self, until: Callable[[], bool]) -> None:
        # Polled, not signalled: the backoff is time-based and the clock injectable.
        while True:
            if until():
                return
            await asyncio.sleep(min(max(self.delay(), 0.01), 1.0))

    async def ready(self) -> None:
        """Until a call could go out; takes no turn (`attempt()` does), so a caller that
        decides not to call after all holds nothing."""
        await self._poll(self.probe_free)

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """Wait for a turn, run the body (Redis calls; at least one), report the outcome:
        a transient error is a failure; a return, or an error Redis itself answered with,
        is a success (Redis is reachable); a cancelled body gives its probe turn back."""
        await self._poll(self.allow)
        try:
            yield
        except TRANSIENT:
            self.record_failure()
            raise
        except Exception:
            self.record_success()
            raise
        except BaseException:
            if self.state == "half_open":
                self._probe_until = 0.0
            raise
        self.record_success()
