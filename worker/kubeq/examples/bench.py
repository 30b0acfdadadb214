"""Handlers for benchmarks: a no-op and a sleep of the payload's length."""

from __future__ import annotations

import asyncio
from typing import Any

from kubeq.app import App, TaskContext

app = App("bench")


@app.task("noop")
async def noop(payload: Any, ctx: TaskContext) -> None:
    return None


@app.task("sleep", timeout=600)
async def sleep(payload: dict[str, float], ctx: TaskContext) -> None:
    await asyncio.sleep(float(payload["seconds"]))
