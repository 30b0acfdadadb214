"""The middleware seam: before/after every attempt, on failure, on submit; a broken hook
never changes an outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kubeq_test_apps
import pytest
from worker_support import queue_config, until

from kubeq.app import App, TaskContext
from kubeq.middleware import Middleware, TaskEnd
from kubeq.protocol import Client, TaskStatus
from kubeq.worker import WorkerSettings, serve


class Recorder(Middleware):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    def before_task(self, ctx: TaskContext, payload: Any) -> None:
        ctx.state["seen"] = True
        self.events.append(("before", ctx.type, ctx.attempt))

    def on_failure(self, ctx: TaskContext, exc: BaseException) -> None:
        self.events.append(("failure", ctx.type, type(exc).__name__))

    def after_task(self, ctx: TaskContext, end: TaskEnd) -> None:
        assert ctx.state["seen"]
        self.events.append(("after", ctx.type, (end.event, end.reason, end.error_type)))

    def on_submit(self, task_type: str, payload: Any, options: dict[str, Any]) -> None:
        options.setdefault("priority", "high")
        self.events.append(("submit", task_type, payload))


class Broken(Middleware):
    def before_task(self, ctx: TaskContext, payload: Any) -> None:
        raise RuntimeError("broken hook")

    after_task = on_failure = before_task  # type: ignore[assignment]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec, broken = Recorder(), Broken()
    kubeq_test_apps.app.add_middleware(broken)  # first: wraps the recorder, fails each hook
    kubeq_test_apps.app.add_middleware(rec)
    yield rec
    kubeq_test_apps.app.middleware.items.remove(rec)
    kubeq_test_apps.app.middleware.items.remove(broken)


async def test_hooks_see_every_attempt_and_a_broken_hook_changes_nothing(
    redis_url: str, recorder: Recorder
) -> None:
    config = queue_config(max_attempts=2)
    with Client.from_url(redis_url, config.name, config=config) as c:
        ids = [c.submit("echo", 1), c.submit("always_fails"), c.submit("times_out")]
        ws = WorkerSettings(
            redis_url=redis_url, queue=config.name, queue_config=config, metrics_port=0
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(ws, kubeq_test_apps.app, stop))
        try:
            await until(lambda: all(c.status(i).status.terminal for i in ids), 20, "all end")
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
        assert [c.status(i).status for i in ids] == [
            TaskStatus.COMPLETED,
            TaskStatus.DEAD,
            TaskStatus.DEAD,
        ]
    ev = recorder.events
    assert ("after", "echo", ("completed", None, None)) in ev
    assert ev.count(("failure", "always_fails", "ValueError")) == 2
    assert ("after", "always_fails", ("retried", None, "ValueError")) in ev
    assert ("after", "always_fails", ("dead", "attempts_exhausted", "ValueError")) in ev
    assert ("failure", "times_out", "TimeoutError") in ev
    assert ("after", "times_out", ("dead", "timeout", "Timeout")) in ev
    assert sum(1 for e in ev if e[0] == "before") == sum(1 for e in ev if e[0] == "after") == 5


def test_on_submit_sees_and_may_change_the_options(redis_url: str) -> None:
    rec = Recorder()
    cfg = queue_config()
    app = App("mw", middleware=[rec]).connect(redis_url, cfg.name, config=cfg)
    handle = app.task("x")(kubeq_test_apps.echo.fn)
    try:
        tid = handle.submit(kubeq_test_apps.Reading(sensor="a", value=1.0))
        assert rec.events == [("submit", "x", {"sensor": "a", "value": 1.0})]
        assert app.client().status(tid).priority == "high"
    finally:
        app.close()


async def test_ctx_submit_fans_out_on_the_workers_connection(
    redis_url: str, recorder: Recorder
) -> None:
    config = queue_config(max_attempts=2)
    other = queue_config()
    with (
        Client.from_url(redis_url, config.name, config=config) as c,
        Client.from_url(redis_url, other.name, config=other) as o,
    ):
        o.publish_config()
        tid = c.submit("fan_out", {"other": other.name})
        ws = WorkerSettings(
            redis_url=redis_url, queue=config.name, queue_config=config, metrics_port=0
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(ws, kubeq_test_apps.app, stop))
        try:
            await until(lambda: c.status(tid).status.terminal, 20, "fan_out ends")
            here1, here2, here3, there = c.result(tid)
            await until(
                lambda: all(c.status(i).status.terminal for i in (here1, here2, here3)),
                20,
                "children end",
            )
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
        assert [c.result(i) for i in (here1, here2, here3)] == [
            {"sensor": "s", "value": 1.0},
            0,
            1,
        ]
        assert o.status(there).payload == "elsewhere"  # waits on the other queue
    assert sum(1 for e in recorder.events if e[0] == "submit") == 4
