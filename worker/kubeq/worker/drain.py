"""Serving until told to stop, then the graceful drain (DESIGN.md invariant 12).

SIGTERM: stop claiming (readyz turns 503, WorkerInfo says draining), give in-flight
handlers most of the grace period, release (not fail) what is still running, flush the
settles, send a last heartbeat. A second signal (`hurry`) skips the wait.

`grace_seconds` is the whole budget from SIGTERM to exit, as Kubernetes counts
terminationGracePeriodSeconds: every wait below takes its bound from one deadline, so a
Redis that is gone (where every call waits for its timeout) cannot stretch the drain
past it and get the process killed before it releases anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from kubeq.worker.jobs import cancel_all, first_done
from kubeq.worker.runtime import Worker

log = logging.getLogger("kubeq.worker")

#: the settle flush (releases included) always gets this long, even past a tiny grace:
#: with Redis up it takes milliseconds, and without it a release is lost to lease expiry
MIN_FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class DrainPlan:
    """Deadlines (monotonic seconds) of the drain's phases, from its start and the grace.

    Handlers may run until `handlers_end`; what follows (release, settle flush, farewell)
    has the reserve up to `end`: a quarter of the grace, at most 5 s.
    """

    end: float
    handlers_end: float

    @classmethod
    def of(cls, start: float, grace: float) -> DrainPlan:
        reserve = min(5.0, grace / 4)
        return cls(end=start + grace, handlers_end=start + grace - reserve)

    def left(self, now: float, until: float | None = None, floor: float = 0.0) -> float:
        """Seconds from `now` to `until` (default: the end), at least `floor`."""
        return max((self.end if until is None else until) - now, floor)


async def serve(worker: Worker, stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """Run `worker` until `stop`, then drain it within its grace period."""
    tasks = worker.start()
    plan: DrainPlan | None = None
    try:
        await stop.wait()
        plan = DrainPlan.of(time.monotonic(), worker.settings.grace_seconds)
        await drain(worker, plan, hurry, tasks[0])
    finally:
        # Past the end only by these floors (0.1 s each): cancelling loops that wait is
        # instant, and the operator leaves 2 s between this budget and the SIGKILL.
        left = 5.0 if plan is None else plan.left(time.monotonic(), floor=0.1)
        await worker.close(tasks, timeout=left)  # no heartbeat re-registers us after this
        left = 2.0 if plan is None else plan.left(time.monotonic(), floor=0.1)
        await farewell(worker, timeout=min(2.0, left))


async def farewell(worker: Worker, timeout: float = 2.0) -> None:
    """Leave the registry; if settles did not flush, a last heartbeat says draining instead
    (the entry then expires with the leases). Bounded, for a Redis that is down."""
    try:
        async with asyncio.timeout(timeout):
            if worker.ledger.pending_settles():
                await worker.heartbeat()
            else:
                await worker.deregister()
    except Exception as exc:
        log.debug("final heartbeat or deregister failed: %r", exc)


async def drain(
    worker: Worker,
    plan: DrainPlan,
    hurry: asyncio.Event,
    claimer: asyncio.Task[None] | None = None,
) -> None:
    worker.stop_claiming()
    if claimer is not None:  # a claim in flight must land before we count what runs
        await asyncio.wait((claimer,), timeout=plan.left(time.monotonic(), plan.handlers_end))
    jobs = [j.task for j in worker.running() if j.task is not None]
    handlers_time = plan.left(time.monotonic(), plan.handlers_end)
    log.info("draining: %d tasks in flight, %.1fs for them", len(jobs), handlers_time)
    if jobs:
        await first_done(asyncio.wait(jobs), hurry.wait(), timeout=handlers_time)
    left = worker.running()
    for job in left:
        job.halt("release")
    if left:
        log.info("releasing %d unfinished tasks", len(left))
        # cancel_all cancels again until done: a handler may swallow one cancellation.
        await cancel_all(
            [j.task for j in left if j.task is not None],
            timeout=plan.left(time.monotonic(), floor=0.2),
        )
    # Even in a hurry: releasing is a settle too. Bounded, for a Redis that is down.
    flush_time = plan.left(time.monotonic(), floor=MIN_FLUSH_SECONDS)
    if not await worker.batcher.flush(timeout=flush_time):
        log.warning("%d settlements not flushed; their leases will expire", len(worker.batcher))
