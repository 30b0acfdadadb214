"""Settle batching: finished tasks share one settle call, sent within ~1 ms or when full.

A batch that fails on a connection error or because Redis is out of memory is retried
(behind the circuit breaker) until Redis takes it: the settle script is fenced, so a retry
of a batch that did apply, or of a task whose lease was lost meanwhile, is refused rather
than applied twice. A batch that Redis rejects outright is split in halves and resent, so
one settlement Redis cannot take is dropped alone (its lease expires and the reaper acts)
and never takes the rest of its batch with it. `failing_since` tells readiness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from kubeq.protocol import Settlement
from kubeq.worker.breaker import TRANSIENT, CircuitBreaker

log = logging.getLogger("kubeq.worker.batcher")


class HasSettlement(Protocol):
    @property
    def settlement(self) -> Settlement: ...


class Settler(Protocol):
    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]: ...


#: results: True applied, False refused by fencing, None unknown (the call failed for good)
OnSettled = Callable[[list[HasSettlement], list[bool | None]], None]


class SettleBatcher:
    def __init__(
        self,
        client: Settler,
        breaker: CircuitBreaker,
        on_settled: OnSettled,
        *,
        max_batch: int = 256,
        flush_delay: float = 0.001,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.breaker = breaker
        self.on_settled = on_settled
        self.on_error = on_error
        self.max_batch = max_batch
        self.flush_delay = flush_delay
        self._pending: list[HasSettlement] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        #: monotonic time of the first failure of the settle now being retried, else None
        self.failing_since: float | None = None
        self.last_applied = time.monotonic()

    def __len__(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kubeq-settle")

    def add(self, item: HasSettlement) -> None:
        self._pending.append(item)
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything added so far is settled; False on timeout."""
        self.flush_delay = 0.0  # stop coalescing: someone is waiting
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopped = True
        if self._task is not None:
            deadline = asyncio.get_running_loop().time() + timeout
            while not self._task.done() and asyncio.get_running_loop().time() < deadline:
                self._task.cancel()  # again: redis-py can swallow one mid-call
                await asyncio.wait((self._task,), timeout=0.1)
            self._task = None

    async def _run(self) -> None:
        while not self._stopped:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            if len(self._pending) < self.max_batch and self.flush_delay > 0:
                await asyncio.sleep(self.flush_delay)  # let more finished tasks join
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            results = await self._send(batch)
            try:
                self.on_settled(batch, results)
            except Exception:
                log.exception("settle bookkeeping failed")

    async def _send(self, batch: list[HasSettlement]) -> list[bool | None]:
        settlements = [item.settlement for item in batch]
        while not self._stopped:
            try:
                async with self.breaker.attempt():
                    applied = await self.client.settle(settlements)
            except TRANSIENT as exc:
                self.on_error()
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.warning("settle of %d tasks failed, will retry: %s", len(batch), exc)
                continue
            except Exception:
                # Not an outage: retrying the same batch cannot help. Halve it until the
                # settlement Redis refuses stands alone; only that one is dropped.
                self.on_error()
                if len(batch) > 1:
                    mid = len(batch) // 2
                    return [*await self._send(batch[:mid]), *await self._send(batch[mid:])]
                log.exception(
                    "settle of task %s was rejected; its lease will expire",
                    settlements[0].task_id,
                )
                return [None]
            self.failing_since = None
            self.last_applied = time.monotonic()
            return list(applied)
        return [None] * len(batch)
