"""Issue 10: progress that clients see. `ctx.progress(value)` from async, thread and
child-process handlers reaches `Client.status(id).progress` through the worker's batched,
rate-limited flush; it is bounded, and it goes when the attempt ends."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import kubeq_test_apps
import pytest
from worker_support import queue_config, serving, until

from kubeq.protocol import (
    MAX_PROGRESS_BYTES,
    Client,
    KubeqError,
    QueueConfig,
    QueueKeys,
    TaskStatus,
)
from kubeq.redis_server import RedisServer, free_port
from kubeq.worker.progress import PROGRESS_INTERVAL, ProgressBuffer

# A real worker on this loop for the block (worker_support.serving), running kubeq_test_apps.app.
worker = functools.partial(serving, app=kubeq_test_apps.app)


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


@pytest.mark.slow
async def test_progress_reported_while_redis_is_down_is_written_once_it_is_back(
    config: QueueConfig, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(appendonly=True, port=free_port(), directory=tmp_path / "redis")
    server.start()
    marker = tmp_path / "marker"
    try:
        with Client.from_url(server.url, config.name, config=config) as c:
            tid = c.submit("progress_after_marker", {"marker": str(marker), "hold": 30})
            async with worker(server.url, config):
                await until(lambda: c.status(tid).status == TaskStatus.RUNNING, what="running")
                server.stop()
                marker.write_text("go")
                await asyncio.sleep(3 * PROGRESS_INTERVAL)  # flushes fail meanwhile
                server.start()
                p = await until(lambda: _progress_or_none(c, tid), 20, "the kept progress")
                assert p == {"reported": "while redis was down"}
                # ...and the outage cost no lease (see test_every_breaker_probe_reports...)
                task = c.status(tid)
                assert task.status == TaskStatus.RUNNING
                assert task.attempts == 1
                c.cancel(tid)
    finally:
        server.close()


def _progress_or_none(client: Client, tid: str) -> Any:
    try:
        task = client.status(tid)
    except KubeqError:  # the client reconnects on the next call
        return None
    return task.progress.value if task.progress is not None else None


def test_the_buffer_keeps_the_latest_value_per_task_and_never_overwrites_a_newer_one() -> None:
    buf = ProgressBuffer()
    for i in range(1000):
        buf.report("a", 1, str(i))
    buf.report("b", 7, '"b"')
    taken = buf.take()
    assert sorted(taken) == [("a", 1, "999"), ("b", 7, '"b"')]
    assert buf.take() == []
    buf.report("a", 1, "1000")  # reported while the flush of `taken` failed
    buf.put_back(taken)
    assert sorted(buf.take()) == [("a", 1, "1000"), ("b", 7, '"b"')]
    buf.report("a", 2, "new lease")
    buf.forget("a", 1)  # the old attempt's end does not drop the new attempt's value
    assert buf.take() == [("a", 2, "new lease")]
    buf.report("a", 2, "x")
    buf.forget("a", 2)
    assert len(buf) == 0
