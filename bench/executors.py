"""Per-task cost of each handler executor, measured through TaskRunner.execute (no Redis).

    python -m bench.executors [--tasks 2000] [--concurrency 1 8]

The same trivial handler (returns its payload) runs on the event loop, in a thread, and in
a supervised child process; the figure is wall time per task including outcome building.
Child start-up is excluded (children are warmed first): it is paid once per child, and
again only after a kill (timeout, cancel, drain) or a recycle.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from bench.common import write
from kubeq.app import App, TaskContext
from kubeq.protocol import ClaimedTask, QueueConfig, QueueOps, Task

app = App("bench-executors")


@app.task("loop")
async def on_loop(payload: Any, ctx: TaskContext) -> Any:
    return payload


@app.task("thread", executor="thread")
def in_thread(payload: Any, ctx: TaskContext) -> Any:
    return payload


@app.task("process")
def in_child(payload: Any, ctx: TaskContext) -> Any:
    return payload


def claimed(kind: str, i: int) -> ClaimedTask:
    task = Task(
        id=f"t{i}", queue="default/bench", type=kind, payload={"i": i}, priority="default",
        attempts=1, max_attempts=3, created_at=0, due_at=0,
    )  # fmt: skip
    return ClaimedTask(task=task, token=i, level_index=1)


async def measure(kind: str, tasks: int, concurrency: int) -> float:
    from kubeq.worker.execution import TaskRunner

    runner = TaskRunner(
        app, QueueOps(QueueConfig(name="bench")), queue="default/bench", worker_id="w",
        clock=lambda: 0, rng=random.Random(1), thread_pool_size=concurrency,
        process_pool_size=concurrency,
    )  # fmt: skip
    try:
        warm = [runner.execute(claimed(kind, i)) for i in range(concurrency)]
        await asyncio.gather(*warm)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                out = await runner.execute(claimed(kind, i))
                assert out.event == "completed", out

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        return (time.perf_counter() - t0) / tasks * 1e6
    finally:
        runner.shutdown()


async def respawn_ms(method: str, rounds: int = 10) -> float:
    """Time to a ready child after a kill: what a timeout or cancel costs in latency."""
    from kubeq.worker.children import ChildPool

    pool = ChildPool(1, preload=[__name__], start_method=method)  # type: ignore[arg-type]
    try:
        async with pool.child():
            pass  # the first start (and, for forkserver, the server) is not counted
        t0 = time.perf_counter()
        for _ in range(rounds):
            async with pool.child() as child:
                child.kill()
                pool._idle.clear()
        return (time.perf_counter() - t0) / rounds * 1000
    finally:
        pool.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = p.parse_args()
    rows = []
    for c in args.concurrency:
        for kind in ("loop", "thread", "process"):
            us = asyncio.run(measure(kind, args.tasks, c))
            rows.append({"executor": kind, "concurrency": c, "us_per_task": round(us, 1)})
            print(f"{kind:8s} concurrency {c:3d}: {us:8.1f} us/task")
    respawn = {m: round(asyncio.run(respawn_ms(m)), 1) for m in ("spawn", "forkserver")}
    for m, ms in respawn.items():
        print(f"respawn after a kill ({m}): {ms:.1f} ms")
    print(write("executors", {"tasks": args.tasks, "results": rows, "respawn_ms": respawn}))


if __name__ == "__main__":
    main()
