"""A circuit breaker for Redis calls: after N consecutive failures stop hammering Redis.

closed -> (N failures) -> open -> (jittered backoff elapsed) -> half-open: one probe at a
time -> success closes, failure re-opens with a longer backoff. Every loop of the worker
(claim, heartbeat, settle, maintenance) shares one breaker, so an outage costs a few
probes per second in total rather than a storm of reconnects.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


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

    async def wait(self) -> None:
        """Until a call may go out."""
        while True:
            if self.allow():
                return
            await asyncio.sleep(min(max(self.delay(), 0.01), 1.0))
