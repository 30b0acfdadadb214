"""Issue 10 items 1 and 8: after a timeout, cancel, lost lease or drain a handler's code is
no longer running and its slot is free; a crashing sync handler fails only its task."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import kubeq_test_apps
import pytest
from worker_support import queue_config, serving, until

from kubeq.protocol import Client, QueueConfig, TaskStatus
from kubeq.worker import WorkerSettings, serve

# A real worker on this loop for the block (worker_support.serving), running kubeq_test_apps.app.
worker = functools.partial(serving, app=kubeq_test_apps.app)


@pytest.fixture
def config() -> QueueConfig:
    return queue_config(max_attempts=1)


@pytest.fixture
def client(redis_url: str, config: QueueConfig) -> Any:
    with Client.from_url(redis_url, config.name, config=config) as c:
        yield c


def status(client: Client, tid: str) -> TaskStatus:
    return client.status(tid).status


async def test_a_timed_out_sync_handler_is_killed_and_its_slot_is_free(
    redis_url: str, config: QueueConfig, client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    slow = client.submit("sync_side_effect", {"seconds": 1.0, "marker": str(marker)})
    quick = client.submit("sync_quick", 0.01)
    t0 = time.monotonic()
    async with worker(redis_url, config, concurrency=1):
        await until(lambda: status(client, quick).terminal, 20, "the quick task")
        quick_done = time.monotonic() - t0
        await asyncio.sleep(max(0.0, 1.5 - quick_done))  # past the slow handler's end
    st = client.status(slow)
    assert (st.status, st.reason) == (TaskStatus.DEAD, "timeout")
    assert client.status(quick).status == TaskStatus.COMPLETED
    assert not marker.exists(), "the timed-out handler ran on after its timeout"


async def test_cancel_and_lost_lease_kill_a_sync_handler(
    redis_url: str, config: QueueConfig, client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    payload = {"seconds": 1.0, "marker": str(marker)}
    cancelled, lost = client.submit("sync_slow", payload), client.submit("sync_slow", payload)
    async with worker(redis_url, config, concurrency=2):
        await until(
            lambda: all(status(client, t) == TaskStatus.RUNNING for t in (cancelled, lost)),
            20,
            "both running",
        )
        client.cancel(cancelled)
        client.redis.hset(client.keys.holders, lost, "999999|thief|0")
        client.redis.zadd(client.keys.leases("default"), {lost: 2**50})
        await until(lambda: status(client, cancelled) == TaskStatus.CANCELLED, 10, "cancel")
        await asyncio.sleep(1.5)
    assert not marker.exists(), "a stopped handler ran on"


async def test_drain_kills_sync_handlers_past_the_grace_period_and_releases_them(
    redis_url: str, config: QueueConfig, client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    tid = client.submit("sync_slow", {"seconds": 2.0, "marker": str(marker)})
    async with worker(redis_url, config, grace_seconds=0.2) as stop:
        await until(lambda: status(client, tid) == TaskStatus.RUNNING, 20, "running")
    # (the context manager set `stop` and waited for serve() to return)
    await asyncio.sleep(2.3)
    st = client.status(tid)
    assert (st.status, st.attempts) == (TaskStatus.PENDING, 0)  # released, attempt refunded
    assert not marker.exists(), "the released handler ran on: it would run twice"
    assert stop.is_set()


async def test_waiting_for_a_free_child_does_not_count_toward_the_timeout(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    # Three 0.3 s tasks, one child, 0.5 s timeout: the last waits 0.6 s for the child.
    ids = [client.submit("sync_quick", 0.3) for _ in range(3)]
    async with worker(redis_url, config, concurrency=3, process_pool_size=1):
        await until(lambda: all(status(client, t).terminal for t in ids), 20, "all done")
    assert [status(client, t) for t in ids] == [TaskStatus.COMPLETED] * 3


@pytest.mark.parametrize("how", ["abort", "segfault", "exit"])
async def test_a_crashing_sync_handler_fails_its_task_and_the_pool_lives_on(
    redis_url: str, client: Client, how: str
) -> None:
    config = client.config
    crash = client.submit("sync_crash", how, max_attempts=2)
    after = [client.submit("in_process", i) for i in range(4)]
    async with worker(redis_url, config, concurrency=2):
        await until(lambda: all(status(client, t).terminal for t in [crash, *after]), 30, "all end")
    st = client.status(crash)
    assert (st.status, st.attempts, st.reason) == (TaskStatus.DEAD, 2, "attempts_exhausted")
    assert st.error is not None
    assert st.error.type == "ChildCrashed"
    want = {"abort": "SIGABRT", "segfault": "SIGSEGV", "exit": "code 3"}[how]
    assert want in st.error.message
    assert [client.result(t) for t in after] == [0, 2, 4, 6]


async def test_a_thread_handler_is_told_to_stop_and_its_result_discarded(
    redis_url: str, config: QueueConfig, client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    tid = client.submit("thread_cooperative", {"seconds": 1.0, "marker": str(marker)})
    async with worker(redis_url, config):
        await until(lambda: status(client, tid).terminal, 20, "timed out")
        await asyncio.sleep(1.0)
    assert client.status(tid).reason == "timeout"
    assert not marker.exists()


async def test_child_processes_are_recycled_after_max_tasks(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ids = [client.submit("child_pid") for _ in range(6)]
    async with worker(redis_url, config, concurrency=1, child_max_tasks=2):
        await until(lambda: all(status(client, t).terminal for t in ids), 20, "all done")
    pids = [client.result(t) for t in ids]
    assert len(set(pids)) == 3, pids  # two tasks per child
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]


async def test_a_worker_drains_and_exits_after_max_tasks(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ids = [client.submit("echo", i) for i in range(10)]
    ws = WorkerSettings(
        redis_url=redis_url, queue=config.name, queue_config=config, metrics_port=0,
        max_tasks=4, concurrency=1,
    )  # fmt: skip
    code = await asyncio.wait_for(serve(ws, kubeq_test_apps.app), 20)  # no stop: it exits
    assert code == 0
    done = [t for t in ids if status(client, t) == TaskStatus.COMPLETED]
    assert len(done) == 4
    assert client.workers() == []


async def test_an_async_handler_that_swallows_cancellation_is_cancelled_again(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    drained, cancelled = client.submit("swallows_cancel", 3), client.submit("swallows_cancel", 3)
    t0 = time.monotonic()
    async with worker(redis_url, config, grace_seconds=0.2):
        await until(
            lambda: all(status(client, t) == TaskStatus.RUNNING for t in (drained, cancelled)),
            what="running",
        )
        client.cancel(cancelled)
        await until(lambda: status(client, cancelled) == TaskStatus.CANCELLED, 10, "cancelled")
    assert time.monotonic() - t0 < 8
    st = client.status(drained)
    assert (st.status, st.attempts) == (TaskStatus.PENDING, 0)  # released on drain


async def test_a_child_that_grows_past_its_rss_limit_is_replaced(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ids = [client.submit("leaky_child", 40) for _ in range(4)]
    async with worker(redis_url, config, concurrency=1, child_max_rss_mb=60):
        await until(lambda: all(status(client, t).terminal for t in ids), 30, "all done")
    pids = [client.result(t) for t in ids]
    # Each task leaves its child above 60 MiB (a child starts well below 40): replaced.
    assert len(set(pids)) == 4, pids


async def test_a_worker_past_max_rss_drains_and_exits(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ids = [client.submit("echo", i) for i in range(40)]
    ws = WorkerSettings(
        redis_url=redis_url, queue=config.name, queue_config=config, metrics_port=0,
        max_rss_mb=1, concurrency=1,
    )  # fmt: skip
    assert await asyncio.wait_for(serve(ws, kubeq_test_apps.app), 20) == 0  # exits by itself
    done = sum(status(client, t) == TaskStatus.COMPLETED for t in ids)
    assert done == 16  # RSS is checked every 16 tasks; any process is above 1 MiB


async def test_a_child_result_that_cannot_be_sent_back_is_dead_at_once(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    tid = client.submit("sync_unsendable")
    async with worker(redis_url, config):
        await until(lambda: status(client, tid).terminal, 20, "ended")
    st = client.status(tid)
    assert (st.status, st.reason, st.attempts) == (TaskStatus.DEAD, "result_not_json", 1)
    assert st.error is not None
    assert "lock" in st.error.message
