"""Small pieces of the worker runtime: a running task's handle, ids, task helpers."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable
from typing import Literal

from kubeq.app import TaskContext
from kubeq.metrics import TaskSeries
from kubeq.protocol import ClaimedTask

log = logging.getLogger("kubeq.worker")
#: why the runtime stopped a handler: lease lost (never settle), cancel requested
#: (settle as cancelled), drain (release it back to the queue)
Stop = Literal["lost", "cancel", "release"]


def new_worker_id() -> str:
    host = socket.gethostname().replace("|", "-")
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


class Job:
    __slots__ = ("claimed", "ctx", "series", "stop", "task")

    def __init__(self, claimed: ClaimedTask) -> None:
        self.claimed = claimed
        self.stop: Stop | None = None
        self.task: asyncio.Task[None] | None = None
        self.ctx: TaskContext | None = None  # set once the handler is about to run
        self.series: TaskSeries | None = None  # its metric series, resolved once at claim

    def halt(self, why: Stop) -> None:
        if self.stop is None:
            self.stop = why
        if self.task is not None:
            self.task.cancel()


async def cancel_all(tasks: list[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Cancel until done: one cancel can be swallowed by a library mid-call."""
    deadline = time.monotonic() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending and time.monotonic() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    if pending:
        log.warning("%d worker loops did not stop", len(pending))


async def first_done(
    main: Awaitable[object], other: Awaitable[object], timeout: float | None
) -> bool:
    """Await `main` until `other` completes or `timeout`; True when `main` finished."""
    a, b = asyncio.ensure_future(main), asyncio.ensure_future(other)
    try:
        await asyncio.wait((a, b), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return a.done()
    finally:
        for f in (a, b):
            f.cancel()
