"""Handlers the worker tests run, importable by name in worker subprocesses.

Not a package: the worker tests put this directory on PYTHONPATH (pytest does the same
for in-process tests), so `--app kubeq_test_apps:app` works everywhere.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pydantic import BaseModel

from kubeq.app import App, TaskContext
from kubeq.exceptions import Permanent, Retry

app = App("kubeq-tests")


class Reading(BaseModel):
    sensor: str
    value: float


@app.task("noop")
async def noop(payload: Any, ctx: TaskContext) -> None:
    return None


@app.task("echo")
async def echo(payload: Any, ctx: TaskContext) -> Any:
    return payload


@app.task("sleep")
async def sleep(payload: dict[str, float], ctx: TaskContext) -> dict[str, Any]:
    ctx.progress(0.0)
    await asyncio.sleep(payload["seconds"])
    return {"slept": payload["seconds"], "attempt": ctx.attempt}


@app.task("sync_sleep")
def sync_sleep(payload: dict[str, float], ctx: TaskContext) -> str:
    time.sleep(payload["seconds"])
    return "done"


@app.task("flaky")
def flaky(payload: dict[str, int], ctx: TaskContext) -> int:
    """Fails with a transient error until attempt `succeed_on`."""
    if ctx.attempt < payload["succeed_on"]:
        raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
    return ctx.attempt


@app.task("retry_then_ok")
async def retry_then_ok(payload: Any, ctx: TaskContext) -> int:
    if ctx.attempt == 1:
        raise Retry(delay=0.01)
    return ctx.attempt


@app.task("always_fails")
async def always_fails(payload: Any, ctx: TaskContext) -> None:
    raise ValueError("still broken")


@app.task("permanent")
async def permanent(payload: Any, ctx: TaskContext) -> None:
    raise Permanent("this can never work")


@app.task("type_error", permanent=(TypeError,))
async def type_error(payload: Any, ctx: TaskContext) -> None:
    raise TypeError("declared permanent")


@app.task("only_retries_oserror", retry_on=(OSError,))
async def only_retries_oserror(payload: Any, ctx: TaskContext) -> None:
    raise KeyError("not a retryable kind")


@app.task("times_out", timeout=0.2)
async def times_out(payload: Any, ctx: TaskContext) -> None:
    await asyncio.sleep(30)


@app.task("sync_times_out", timeout=0.2)
def sync_times_out(payload: Any, ctx: TaskContext) -> None:
    time.sleep(1.0)


@app.task("validated", payload_model=Reading)
async def validated(reading: Reading, ctx: TaskContext) -> Reading:
    return Reading(sensor=reading.sensor, value=reading.value * 2)


@app.task("not_json")
async def not_json(payload: Any, ctx: TaskContext) -> Any:
    return {"an": object()}


@app.task("in_process", executor="process")
def in_process(payload: int, ctx: TaskContext) -> int:
    import os

    return payload * 2 + 0 * os.getpid()


# -- handlers that break the contract in every way a handler can (issue 9 item 4, 10 item 7)

#: runs per task id of the hostile handlers below (in-process workers only)
RUNS: dict[str, int] = {}


def _count(ctx: TaskContext) -> None:
    RUNS[ctx.task_id] = RUNS.get(ctx.task_id, 0) + 1


@app.task("raises_cancelled")
async def raises_cancelled(payload: Any, ctx: TaskContext) -> None:
    _count(ctx)
    raise asyncio.CancelledError("the handler's own CancelledError")


@app.task("raises_base")
async def raises_base(kind: str, ctx: TaskContext) -> None:
    _count(ctx)
    raise {"exit": SystemExit, "interrupt": KeyboardInterrupt, "genexit": GeneratorExit}[kind]()


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


@app.task("unprintable")
async def unprintable(payload: Any, ctx: TaskContext) -> None:
    _count(ctx)
    raise Unprintable()


@app.task("too_deep")
async def too_deep(payload: Any, ctx: TaskContext) -> Any:
    _count(ctx)
    out: list[Any] = []
    for _ in range(100_000):
        out = [out]
    return out


@app.task("lone_surrogate")
async def lone_surrogate(payload: Any, ctx: TaskContext) -> str:
    _count(ctx)
    return "bad \udc80 text"


class Strict(BaseModel):
    value: int

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Strict:
        raise LookupError("a validator that raises something other than ValidationError")


@app.task("validator_raises", payload_model=Strict)
async def validator_raises(payload: Strict, ctx: TaskContext) -> None:
    _count(ctx)


@app.task("bad_retry_delay")
async def bad_retry_delay(delay: str, ctx: TaskContext) -> None:
    _count(ctx)
    exc = Retry()
    exc.delay = float(delay)  # set after construction: the constructor cannot catch it
    raise exc


@app.task("sync_raises_base")
def sync_raises_base(kind: str, ctx: TaskContext) -> None:
    raise {"exit": SystemExit, "interrupt": KeyboardInterrupt}[kind]()


# -- sync handlers the worker must be able to stop (issue 10 items 1 and 8) ------------------


def _side_effect_after(payload: dict[str, Any]) -> str:
    time.sleep(payload["seconds"])
    with open(payload["marker"], "a") as f:  # the side effect a stopped handler must not do
        f.write("ran to the end\n")
    return "done"


@app.task("sync_side_effect", timeout=0.3)
def sync_side_effect(payload: dict[str, Any], ctx: TaskContext) -> str:
    return _side_effect_after(payload)


@app.task("sync_slow")
def sync_slow(payload: dict[str, Any], ctx: TaskContext) -> str:
    return _side_effect_after(payload)


@app.task("sync_quick", timeout=0.5)
def sync_quick(seconds: float, ctx: TaskContext) -> str:
    time.sleep(seconds)
    return "done"


@app.task("sync_crash")
def sync_crash(how: str, ctx: TaskContext) -> None:
    import ctypes
    import os

    if how == "abort":
        os.abort()
    if how == "segfault":
        ctypes.string_at(0)
    os._exit(3)


@app.task("thread_cooperative", executor="thread", timeout=0.2)
def thread_cooperative(payload: dict[str, Any], ctx: TaskContext) -> str:
    deadline = time.monotonic() + payload["seconds"]
    while time.monotonic() < deadline:
        if ctx.stopped():
            return "stopped"
        time.sleep(0.01)
    with open(payload["marker"], "a") as f:
        f.write("ran to the end\n")
    return "done"


# -- a handler's own policy, whatever the submit path (issue 10 item 2) ----------------------


@app.task("capped", max_attempts=1)
async def capped(payload: Any, ctx: TaskContext) -> None:
    raise ValueError(f"attempt {ctx.attempt} of {ctx.max_attempts}")


@app.task("generous", max_attempts=4)
async def generous(payload: Any, ctx: TaskContext) -> None:
    raise ValueError(f"attempt {ctx.attempt} of {ctx.max_attempts}")


@app.task("child_pid")
def child_pid(payload: Any, ctx: TaskContext) -> int:
    import os

    return os.getpid()


@app.task("swallows_cancel")
async def swallows_cancel(times: int, ctx: TaskContext) -> str:
    swallowed = 0
    while True:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed += 1
            if swallowed >= times:
                raise


@app.task("fan_out")
async def fan_out(payload: dict[str, Any], ctx: TaskContext) -> list[str]:
    ids = [await ctx.submit("echo", Reading(sensor="s", value=1))]
    ids += await ctx.submit_many([{"type": "echo", "payload": i} for i in range(2)])
    ids.append(await ctx.submit("echo", "elsewhere", queue=payload["other"]))
    return ids


_LEAK: list[bytes] = []


@app.task("leaky_child")
def leaky_child(mb: int, ctx: TaskContext) -> int:
    """Leaks `mb` MiB per task in its process, as a careless handler does."""
    import os

    _LEAK.append(os.urandom(mb * 1024 * 1024))
    return os.getpid()


@app.task("sync_unsendable", max_attempts=3)
def sync_unsendable(payload: Any, ctx: TaskContext) -> Any:
    import threading

    return {"lock": threading.Lock()}  # cannot be pickled back to the worker


async def _report_for(ctx: TaskContext, seconds: float) -> int:
    """Report a counter as fast as the loop allows for `seconds`; how many reports."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        n += 1
        ctx.progress({"n": n})
        await asyncio.sleep(0.0005)
    return n


@app.task("progress_async")
async def progress_async(payload: dict[str, float], ctx: TaskContext) -> int:
    n = await _report_for(ctx, payload["seconds"])
    ctx.progress({"done": n})
    await asyncio.sleep(payload["hold"])  # the latest value is flushed while it waits
    return n


def _sync_progress(payload: dict[str, float], ctx: TaskContext) -> str:
    for step in range(int(payload["steps"])):
        ctx.progress({"step": step, "of": payload["steps"]})
    ctx.progress({"step": payload["steps"], "of": payload["steps"], "pid": os.getpid()})
    time.sleep(payload["hold"])
    return "done"


@app.task("progress_process")
def progress_process(payload: dict[str, float], ctx: TaskContext) -> str:
    return _sync_progress(payload, ctx)


@app.task("progress_thread", executor="thread")
def progress_thread(payload: dict[str, float], ctx: TaskContext) -> str:
    return _sync_progress(payload, ctx)


@app.task("progress_too_big")
def progress_too_big(size: int, ctx: TaskContext) -> str:
    from kubeq.protocol import ProgressNotStorable

    try:
        ctx.progress("x" * size)
    except ProgressNotStorable as exc:
        return f"refused: {exc}"
    return "accepted"


@app.task("progress_after_marker")
def progress_after_marker(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Reports once, when the test creates the marker file; then holds its lease."""
    from pathlib import Path

    while not Path(payload["marker"]).exists():
        time.sleep(0.02)
    ctx.progress({"reported": "while redis was down"})
    time.sleep(payload["hold"])
    return "done"


@app.task("leaks_cycle")
async def leaks_cycle(payload: dict[str, int], ctx: TaskContext) -> None:
    """Leaves a reference cycle holding `bytes` of memory: only the collector frees it."""
    a: dict[str, Any] = {"blob": bytearray(payload["bytes"])}
    b: dict[str, Any] = {"a": a}
    a["b"] = b
