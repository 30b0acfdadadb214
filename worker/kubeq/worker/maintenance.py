"""Reaper and dead-letter retention, run by one worker of the pool at a time.

Every ~lease/2 seconds (jittered) each worker tries a short maintenance lock; the holder
reaps expired leases (their tasks go back to the front of the queue), drops expired
results, deregisters silent workers and drops dead letters past their retention. The lock
expires by itself, so a worker that dies holding it delays maintenance by one round only.
The reap script is safe to run concurrently anyway; the lock just saves the work.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from kubeq.protocol import AsyncClient
from kubeq.worker.breaker import TRANSIENT, CircuitBreaker

log = logging.getLogger("kubeq.worker.maintenance")


class Maintenance:
    def __init__(
        self,
        client: AsyncClient,
        worker_id: str,
        breaker: CircuitBreaker,
        *,
        on_error: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.breaker = breaker
        self.on_error = on_error
        self.rng = rng or random.Random()
        self.stopped = False
        lease = client.config.lease_seconds
        self.interval = max(lease / 2, 0.05)
        # Shorter than the interval: next round, whoever asks first gets it.
        self.lock_ms = max(int(self.interval * 800), 20)

    async def run_once(self) -> bool:
        """One round; True when this worker held the lock and did the work."""
        if not await self.client.acquire_maintenance(self.worker_id, self.lock_ms):
            return False
        report = await self.client.reap()
        if report.requeued or report.dead or report.cancelled:
            log.info(
                "reaped expired leases: %d requeued, %d dead-lettered, %d cancelled",
                len(report.requeued),
                len(report.dead),
                len(report.cancelled),
            )
        expired = await self.client.expire_dead_letters()
        if expired:
            log.info("dropped %d dead letters past their retention", expired)
        return True

    async def run(self) -> None:
        while not self.stopped:
            await asyncio.sleep(self.interval * self.rng.uniform(0.8, 1.2))
            try:
                async with self.breaker.attempt():
                    await self.run_once()
            except TRANSIENT as exc:
                self.on_error()
                log.debug("maintenance skipped, Redis unavailable: %s", exc)
            except Exception:
                self.on_error()
                log.exception("maintenance round failed")
