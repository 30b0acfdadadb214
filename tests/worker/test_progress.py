"""Issue 10: progress that clients see. `ctx.progress(value)` from async, thread and
child-process handlers reaches `Client.status(id).progress` through the worker's batched,
rate-limited flush; it is bounded, and it goes when the attempt ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import kubeq_test_apps
import pytest
from support import queue_config, until

from kubeq.protocol import MAX_PROGRESS_BYTES, Client, QueueConfig, QueueKeys, TaskStatus
from kubeq.worker import WorkerSettings, serve
from kubeq.worker.progress import PROGRESS_INTERVAL


@contextlib.asynccontextmanager
async def worker(redis_url: str, config: QueueConfig, **settings: Any) -> AsyncIterator[None]:
    ws = WorkerSettings(
        redis_url=redis_url, queue=config.name, queue_config=config, metrics_port=0, **settings
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(ws, kubeq_test_apps.app, stop))
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


@pytest.fixture
def config() -> QueueConfig:
    return queue_config(lease_seconds=10.0, heartbeat_seconds=2.0, max_attempts=1)


@pytest.fixture
def client(redis_url: str, config: QueueConfig) -> Any:
    with Client.from_url(redis_url, config.name, config=config) as c:
        yield c


def progress_entries(client: Client, config: QueueConfig) -> int:
    return int(client.redis.hlen(QueueKeys(config.namespace, config.name).progress))


async def test_async_progress_is_rate_limited_latest_wins_and_gone_at_the_end(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    seconds = 2.5
    tid = client.submit("progress_async", {"seconds": seconds, "hold": 2 * PROGRESS_INTERVAL})
    stamps: set[int] = set()
    async with worker(redis_url, config):
        await until(lambda: client.status(tid).status == TaskStatus.RUNNING, what="running")
        started = time.monotonic()
        last: Any = None
        while time.monotonic() - started < seconds:
            task = client.status(tid)
            if task.progress is not None:
                stamps.add(task.progress.at)
                last = task.progress.value
            await asyncio.sleep(0.01)
        assert last is not None
        assert "n" in last, last
        # The latest value wins once the handler stops reporting.
        done = await until(
            lambda: (p := client.status(tid).progress) is not None and "done" in p.value and p,
            what="the final progress value",
        )
        n = await until(lambda: client.status(tid).status.terminal and client.result(tid, 1))
    assert done.value == {"done": n}
    # Thousands of reports, yet one write per task per interval at most.
    assert n > 100 * seconds, n
    assert 1 <= len(stamps) <= seconds / PROGRESS_INTERVAL + 2, sorted(stamps)
    assert client.status(tid).progress is None  # a finished task carries no progress
    assert progress_entries(client, config) == 0


@pytest.mark.parametrize("task_type", ["progress_process", "progress_thread"])
async def test_sync_handlers_progress_crosses_to_the_worker(
    redis_url: str, config: QueueConfig, client: Client, task_type: str
) -> None:
    tid = client.submit(task_type, {"steps": 500, "hold": 2 * PROGRESS_INTERVAL + 1})
    async with worker(redis_url, config):
        p = await until(
            lambda: (t := client.status(tid).progress) is not None and t.value["step"] == 500 and t,
            what="the last progress of the sync handler",
        )
        assert p.value["of"] == 500
        await until(lambda: client.status(tid).status.terminal, what="the end")
    assert client.result(tid) == "done"
    assert progress_entries(client, config) == 0


async def test_a_too_large_progress_is_refused_to_the_handler(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    big = client.submit("progress_too_big", MAX_PROGRESS_BYTES)
    small = client.submit("progress_too_big", 100)
    async with worker(redis_url, config):
        await until(lambda: client.status(big).status.terminal, what="the big one")
        await until(lambda: client.status(small).status.terminal, what="the small one")
    refused = client.result(big)
    assert refused.startswith("refused:")
    assert f"limit is {MAX_PROGRESS_BYTES} bytes" in refused
    assert client.result(small) == "accepted"
    assert progress_entries(client, config) == 0
