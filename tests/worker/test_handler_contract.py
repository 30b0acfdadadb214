"""The handler contract (issue 9 item 4, issue 10 item 7): whatever a handler does ends as
that attempt's outcome, for that task alone. Only the worker itself releases a task."""

from __future__ import annotations

import asyncio
import functools
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
    return queue_config(max_attempts=2)


@pytest.fixture
def client(redis_url: str, config: QueueConfig) -> Any:
    with Client.from_url(redis_url, config.name, config=config) as c:
        yield c


HOSTILE = [
    ("raises_cancelled", None, "CancelledError"),
    ("raises_base", "exit", "SystemExit"),
    ("raises_base", "interrupt", "KeyboardInterrupt"),
    ("raises_base", "genexit", "GeneratorExit"),
    ("unprintable", None, "Unprintable"),
    ("too_deep", None, None),
    ("lone_surrogate", None, None),
    ("validator_raises", {"value": 1}, None),
    ("bad_retry_delay", "inf", "Retry"),
    ("bad_retry_delay", "nan", "Retry"),
    ("bad_retry_delay", "-1", "Retry"),
]


async def test_anything_a_handler_does_is_a_failed_attempt_never_a_release(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ids = {f"{t}:{p}": client.submit(t, p) for t, p, _ in HOSTILE}
    async with worker(redis_url, config):
        await until(
            lambda: all(client.status(i).status.terminal for i in ids.values()),
            20,
            "every hostile task to end",
        )
    counters = client.stats().counters
    assert counters.get("released", 0) == 0
    for (name, _, err_type), tid in zip(HOSTILE, ids.values(), strict=True):
        st = client.status(tid)
        assert st.status == TaskStatus.DEAD, (name, st)
        assert st.error is not None, name
        if err_type is not None:
            assert st.error.type == err_type, (name, st.error)
        runs = kubeq_test_apps.RUNS.get(tid, 0)
        # bounded: a run per attempt, attempts never above max (validator: never ran)
        assert runs <= 2, (name, runs)
        assert st.attempts <= 2, (name, st.attempts)


async def test_sync_handler_raising_system_exit_fails_its_task(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    ids = [client.submit("sync_raises_base", k) for k in ("exit", "interrupt")]
    ok = client.submit("echo", 1)
    async with worker(redis_url, config):
        await until(
            lambda: all(client.status(i).status.terminal for i in [*ids, ok]), 30, "tasks end"
        )
    assert [client.status(i).error.type for i in ids] == ["SystemExit", "KeyboardInterrupt"]  # type: ignore[union-attr]
    assert client.status(ok).status == TaskStatus.COMPLETED


async def test_a_handlers_max_attempts_applies_whatever_the_submit_path(
    redis_url: str, client: Client
) -> None:
    # Queue default 3; submitted with the plain client (not the handle), as the CLI does.
    config = queue_config(name=client.config.name, max_attempts=3)
    with Client.from_url(redis_url, config.name, config=config) as c:
        capped, generous = c.submit("capped"), c.submit("generous")
        override = c.submit("generous", max_attempts=2)  # per-task override wins
        default = c.submit("always_fails")  # no handler policy: the queue's
    ids = [capped, generous, override, default]
    async with worker(redis_url, config):
        await until(lambda: all(client.status(i).status.terminal for i in ids), 20, "all end")
    attempts = [client.status(i).attempts for i in ids]
    assert attempts == [1, 4, 2, 3]
    err = client.status(generous).error
    assert err is not None
    assert err.message == "attempt 4 of 4"  # ctx.max_attempts is the effective value


async def test_a_worker_picks_up_a_config_published_after_it_started(redis_url: str) -> None:
    published = queue_config(priorities=[{"name": "urgent"}, {"name": "default"}])
    ws = WorkerSettings(redis_url=redis_url, queue=published.name, metrics_port=0)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(ws, kubeq_test_apps.app, stop))  # nothing published yet
    try:
        with Client.from_url(redis_url, published.name, config=published) as c:
            await asyncio.sleep(0.5)  # serving the default levels by now
            tid = c.submit("echo", "hi", priority="urgent")  # a level the defaults lack
            c.publish_config()
            await until(lambda: c.status(tid).status.terminal, 20, "served on the new config")
            assert c.result(tid) == "hi"
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def test_no_outcome_can_be_built_the_lease_expires_and_the_reaper_ends_it(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    from kubeq.protocol import AsyncClient
    from kubeq.worker.runtime import Worker

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("outcome builders are broken")

    tid = client.submit("echo", 1)
    ws = WorkerSettings(redis_url=redis_url, queue=config.name, queue_config=config)
    ac = await AsyncClient.from_url(redis_url, config.name, config=config)
    w = Worker(ws, kubeq_test_apps.app, ac)
    w.runner.ops = type(ac.ops)(config)  # the runner's own ops, then break its builders
    w.runner.ops.completion = broken  # type: ignore[method-assign]
    w.runner.ops.failure = broken  # type: ignore[method-assign]
    tasks = w.start()
    try:
        # Not stranded "running" under live heartbeats: the reaper ends it (2 attempts).
        await until(lambda: client.status(tid).status.terminal, 20, "the reaper ends it")
        st = client.status(tid)
        assert (st.status, st.attempts) == (TaskStatus.DEAD, 2)
        assert w.in_flight == 0
    finally:
        await w.close(tasks)
        await ac.close()


async def test_one_worker_serves_several_queues_each_with_its_share_of_slots(
    redis_url: str,
) -> None:
    from kubeq.worker.process import split_slots

    assert split_slots(16, 3) == [6, 5, 5]
    assert split_slots(2, 2) == [1, 1]
    a, b = queue_config(), queue_config()
    with (
        Client.from_url(redis_url, a.name, config=a) as ca,
        Client.from_url(redis_url, b.name, config=b) as cb,
    ):
        ca.publish_config()
        cb.publish_config()
        # Queue a is full of slow work; queue b must still be served (its own slots).
        for _ in range(4):
            ca.submit("sleep", {"seconds": 30})
        quick = cb.submit("echo", "b")
        ws = WorkerSettings(
            redis_url=redis_url, queue=f"{a.name},{b.name}", concurrency=4, metrics_port=0,
            grace_seconds=0.2,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(serve(ws, kubeq_test_apps.app, stop))
        try:
            await until(lambda: cb.status(quick).status.terminal, 20, "queue b served")
            assert cb.result(quick) == "b"
            assert ca.stats().in_flight == 2  # a got its share (2 of 4 slots), not all
            assert {w.concurrency for w in ca.workers() + cb.workers()} == {2}
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
