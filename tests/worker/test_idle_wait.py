"""An idle worker waits on the wake list with its next claim queued behind the wait (one
round trip from a submit to a running task). A drain interrupts that wait; whatever the
claim behind it leased must go back to the queue at once, with no attempt charged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import kubeq_test_apps
import pytest
from worker_support import queue_config, until

from kubeq.protocol import AsyncClient, Client, QueueConfig, TaskStatus, WokenClaim
from kubeq.worker import WorkerSettings
from kubeq.worker.drain import DrainPlan, drain
from kubeq.worker.runtime import Worker

C = TypeVar("C", bound=AsyncClient)


@pytest.fixture
def config() -> QueueConfig:
    return queue_config(max_attempts=1)


@pytest.fixture
def client(redis_url: str, config: QueueConfig) -> Iterator[Client]:
    with Client.from_url(redis_url, config.name, config=config) as c:
        yield c


class ReplyInFlight(AsyncClient):
    """Once `go` is set, the claim behind the wait runs in Redis and its reply is still
    on its way when the drain interrupts: the case where the worker holds leases it has
    not heard of."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()
        self.ran = asyncio.Event()

    async def wait_then_claim(
        self, timeout: float, worker: str, n: int, *, claim_id: str
    ) -> WokenClaim:
        self.waiting.set()
        await self.go.wait()
        await self.claim(worker, n, claim_id=claim_id)
        self.ran.set()
        await asyncio.Event().wait()  # the reply never arrives
        raise AssertionError("unreachable")


async def client_as(cls: type[C], redis_url: str, config: QueueConfig) -> C:
    """An AsyncClient subclass standing in for the real one, on a connection of its own."""
    return cls((await AsyncClient.from_url(redis_url, config.name, config=config)).redis, config)


async def drained_worker(redis_url: str, config: QueueConfig, ac: AsyncClient) -> Worker:
    ws = WorkerSettings(
        redis_url=redis_url, queue=config.name, queue_config=config, concurrency=4,
        metrics_port=0, grace_seconds=2.0,
    )  # fmt: skip
    return Worker(ws, kubeq_test_apps.app, ac)


async def test_a_drain_releases_what_the_claim_behind_an_interrupted_wait_leased(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ac = await client_as(ReplyInFlight, redis_url, config)
    w = await drained_worker(redis_url, config, ac)
    tasks = w.start()
    try:
        await asyncio.wait_for(ac.waiting.wait(), 10)  # idle: the queue was empty
        ids = client.submit_many([{"type": "echo", "payload": i} for i in range(2)])
        ac.go.set()
        await asyncio.wait_for(ac.ran.wait(), 10)
        assert client.stats().in_flight == 2  # leased to a worker that never heard of it
        started = time.monotonic()
        await drain(w, DrainPlan.of(started, 2.0), asyncio.Event(), tasks[0])
        assert tasks[0].done()  # the claim loop ended with the drain
    finally:
        await w.close(tasks)
        await ac.close()
    st = client.stats()
    assert (st.ready, st.in_flight, st.dead) == (2, 0, 0)
    for tid in ids:  # released, not run and not charged (max_attempts is 1)
        assert (client.status(tid).status, client.status(tid).attempts) == (
            TaskStatus.PENDING,
            0,
        )


async def test_a_drain_of_an_idle_worker_leaves_nothing_leased_and_new_tasks_wait(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ac = await AsyncClient.from_url(redis_url, config.name, config=config)
    w = await drained_worker(redis_url, config, ac)
    tasks = w.start()
    try:
        done = client.submit("echo", 1)
        await until(lambda: client.status(done).status.terminal, 10, "served")
        await asyncio.sleep(0.2)  # blocked in the wait, its claim queued behind it
        await drain(w, DrainPlan.of(time.monotonic(), 2.0), asyncio.Event(), tasks[0])
        assert tasks[0].done()
    finally:
        await w.close(tasks)
        await ac.close()
    later = client.submit_many([{"type": "echo"}] * 3)  # would wake a live wait
    await asyncio.sleep(0.3)
    st = client.stats()
    assert (st.ready, st.in_flight) == (3, 0)
    assert all(client.status(t).status == TaskStatus.PENDING for t in later)


class SwallowsOneCancel(AsyncClient):
    """The first cancellation of a wait is lost, as Python 3.11's `asyncio.wait_for` (under
    which redis-py sends) loses one that arrives as the send completes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = asyncio.Event()
        self.swallowed = 0

    async def wait_then_claim(
        self, timeout: float, worker: str, n: int, *, claim_id: str
    ) -> WokenClaim:
        self.waiting.set()
        try:
            await asyncio.sleep(30)  # stands for the send in flight
        except asyncio.CancelledError:
            self.swallowed += 1  # and lost
        await self.redis.delete(self.keys.wake)  # no wake-up left over: it blocks
        return await super().wait_then_claim(timeout, worker, n, claim_id=claim_id)


async def test_a_lost_cancellation_does_not_let_the_wait_claim_what_the_drain_released(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ac = await client_as(SwallowsOneCancel, redis_url, config)
    w = await drained_worker(redis_url, config, ac)
    slow = client.submit("sleep", {"seconds": 30})
    tasks = w.start()
    try:
        await until(lambda: client.status(slow).status == TaskStatus.RUNNING, 10, "running")
        await asyncio.wait_for(ac.waiting.wait(), 10)
        plan = DrainPlan.of(time.monotonic(), 1.0)
        await drain(w, plan, asyncio.Event(), tasks[0])
        assert tasks[0].done()  # the repeated interruption reached the wait
    finally:
        await w.close(tasks)
        await ac.close()
    assert ac.swallowed == 1
    await asyncio.sleep(0.3)  # a claim still queued anywhere would run on this wake-up
    st = client.stats()
    assert (st.ready, st.in_flight) == (1, 0)
    assert (client.status(slow).status, client.status(slow).attempts) == (TaskStatus.PENDING, 0)
