"""Serving until told to stop, then the graceful drain (DESIGN.md invariant 12).

SIGTERM: stop claiming (readyz turns 503, WorkerInfo says draining), give in-flight
handlers up to `grace` seconds, release (not fail) what is still running, flush the
settles, send a last heartbeat. A second signal (`hurry`) skips the wait.
"""

from __future__ import annotations

import asyncio
import logging

from kubeq.worker.jobs import cancel_all, first_done
from kubeq.worker.runtime import Worker

log = logging.getLogger("kubeq.worker")


async def serve(worker: Worker, stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """Run `worker` until `stop`, then drain it."""
    tasks = worker.start()
    try:
        await stop.wait()
        await drain(worker, worker.settings.grace_seconds, hurry, tasks[0])
    finally:
        await worker.close(tasks)  # no heartbeat can re-register us after the farewell
        await farewell(worker)


async def farewell(worker: Worker) -> None:
    """Leave the registry; if settles did not flush, a last heartbeat says draining instead
    (the entry then expires with the leases). Bounded, for a Redis that is down."""
    try:
        async with asyncio.timeout(2):
            if worker.ledger.pending_settles():
                await worker.heartbeat()
            else:
                await worker.deregister()
    except Exception as exc:
        log.debug("final heartbeat or deregister failed: %r", exc)


async def drain(
    worker: Worker, grace: float, hurry: asyncio.Event, claimer: asyncio.Task[None] | None = None
) -> None:
    worker.stop_claiming()
    if claimer is not None:  # a claim in flight must land before we count what runs
        await asyncio.wait((claimer,), timeout=10)
    jobs = [j.task for j in worker.running() if j.task is not None]
    log.info("draining: %d tasks in flight, grace %.1fs", len(jobs), grace)
    if jobs:
        await first_done(asyncio.wait(jobs), hurry.wait(), timeout=grace)
    left = worker.running()
    for job in left:
        job.halt("release")
    if left:
        log.info("releasing %d unfinished tasks", len(left))
        # cancel_all cancels again until done: a handler may swallow one cancellation.
        await cancel_all([j.task for j in left if j.task is not None], timeout=5)
    # Even in a hurry: releasing is a settle too. Bounded, for a Redis that is down.
    if not await worker.batcher.flush(timeout=3 if hurry.is_set() else 10):
        log.warning("%d settlements not flushed; their leases will expire", len(worker.batcher))
