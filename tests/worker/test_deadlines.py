"""Issue 12: one deadline structure for every running handler's timeout (deadlines.py),
with asyncio.timeout's contract, and the runner's timeouts going through it."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from worker_support import queue_config

from kubeq.app import App, TaskContext
from kubeq.protocol import ClaimedTask, QueueOps, Task
from kubeq.worker.deadlines import Deadlines, Scope
from kubeq.worker.execution import TaskRunner


def timers(loop: asyncio.AbstractEventLoop) -> int:
    """Live timers on the stock loop (cancelled ones are dropped lazily by the loop)."""
    return sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]


async def test_a_handler_past_its_deadline_gets_timeout_error_and_others_run_on() -> None:
    d = Deadlines()

    async def run(timeout: float, sleep: float) -> str:
        try:
            async with Scope(d, timeout) as scope:
                await asyncio.sleep(sleep)
        except TimeoutError:
            assert scope.expired()
            return "timeout"
        assert not scope.expired()
        return "done"

    got = await asyncio.gather(run(0.05, 1), run(0.5, 0.01), run(0.02, 1), run(None, 0.01))  # type: ignore[arg-type]
    assert got == ["timeout", "done", "timeout", "done"]
    assert len(d) == 0


async def test_many_running_handlers_share_one_loop_timer() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    before = timers(loop)
    release = asyncio.Event()
    inside = 0

    async def handler(timeout: float) -> None:
        nonlocal inside
        async with Scope(d, timeout):
            inside += 1
            await release.wait()

    tasks = [asyncio.create_task(handler(5.0 + (i % 3))) for i in range(300)]
    for _ in range(10):  # let every handler enter its scope
        await asyncio.sleep(0)
    assert inside == 300
    assert len(d) == 300
    assert timers(loop) - before == 1  # asyncio.timeout would have armed 300
    release.set()
    await asyncio.gather(*tasks)
    assert len(d) == 0


async def test_finished_entries_behind_a_long_running_one_do_not_pile_up() -> None:
    d = Deadlines()
    hold = asyncio.Event()

    async def long() -> None:
        async with Scope(d, 60.0):
            await hold.wait()

    head = asyncio.create_task(long())
    await asyncio.sleep(0)
    for _ in range(5000):  # each finishes at once, behind the long-running head
        async with Scope(d, 60.0):
            pass
    assert len(d._fifos[60.0]) <= 2 * len(d) + 33
    hold.set()
    await head


async def test_a_cancel_from_outside_wins_over_the_timeout() -> None:
    d = Deadlines()
    entered = asyncio.Event()
    scope = Scope(d, 0.05)

    async def handler() -> None:
        async with scope:
            entered.set()
            await asyncio.sleep(1)

    t = asyncio.create_task(handler())
    await entered.wait()
    # The outside cancel lands in the same loop pass as the deadline.
    assert scope._entry is not None
    asyncio.get_running_loop().call_at(scope._entry.at, t.cancel)
    with pytest.raises(asyncio.CancelledError):
        await t
    assert scope.expired()


async def test_a_handlers_own_timeout_error_is_not_the_deadline() -> None:
    d = Deadlines()
    with pytest.raises(TimeoutError) as info:
        async with Scope(d, 10.0) as scope:
            raise TimeoutError("mine")
    assert str(info.value) == "mine"
    assert not scope.expired()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_runner_timeouts_use_the_shared_structure() -> None:
    app = App("deadlines")

    @app.task("slow", timeout=0.05)
    async def slow(payload: Any, ctx: TaskContext) -> None:
        await asyncio.sleep(5)

    @app.task("fast", timeout=30)
    async def fast(payload: Any, ctx: TaskContext) -> int:
        await asyncio.sleep(0.01)
        return 1

    runner = TaskRunner(
        app,
        QueueOps(queue_config(name="q")),
        queue="default/q",
        worker_id="w",
        clock=lambda: 1_000,
        rng=random.Random(1),
    )
    loop = asyncio.get_running_loop()
    before = timers(loop)

    def claimed(i: int, type: str) -> ClaimedTask:
        task = Task(
            id=f"t{i}", queue="default/q", type=type, payload=None, priority="default",
            attempts=1, max_attempts=3, created_at=0, due_at=0,
        )  # fmt: skip
        return ClaimedTask(task=task, token=i, level_index=2)

    runs = [asyncio.create_task(runner.execute(claimed(i, "fast"))) for i in range(100)]
    runs.append(asyncio.create_task(runner.execute(claimed(100, "slow"))))
    await asyncio.sleep(0.005)
    # 101 handlers with timeouts; the shared structure arms one timer (asyncio.sleep adds
    # the handlers' own 101 sleep timers, counted apart here).
    assert timers(loop) - before <= 101 + 1
    outs = await asyncio.gather(*runs)
    assert [o.event for o in outs[:100]] == ["completed"] * 100
    assert (outs[100].event, outs[100].reason) == ("retried", "timeout")
    runner.shutdown()
