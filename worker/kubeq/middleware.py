"""The middleware seam: hooks around every task and every submit, for error reporters,
tracers and custom metrics.

    class Sentryish(Middleware):
        def on_failure(self, ctx, exc):
            report(exc, task_id=ctx.task_id, attempt=ctx.attempt)

    app = App("myapp", middleware=[Sentryish()])

Order: `before_task` and `on_submit` run in the order given, `after_task` in reverse (the
first middleware wraps all others). All hooks run in the worker's (or producer's) own
process and on its event loop, also for handlers that run in a child process, so they
must be quick and must not block. A hook that raises is logged and ignored: a broken
reporter never changes a task's outcome. `ctx.state` is a dict the hooks of one attempt
share (a tracer keeps its span there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubeq.app import TaskContext

log = logging.getLogger("kubeq.middleware")


@dataclass(frozen=True, slots=True)
class TaskEnd:
    """How one attempt ended, as the worker settles it."""

    event: str  # completed | retried | dead | cancelled | released | lost
    reason: str | None  # dead-letter reason or why it was retried/cancelled/released
    duration: float | None  # seconds the handler ran (None: it never started)
    error_type: str | None = None  # the stored error's type, when the attempt failed


class Middleware:
    """Override the hooks you need; the defaults do nothing."""

    def before_task(self, ctx: TaskContext, payload: Any) -> None:
        """The handler is about to run (after payload validation)."""

    def on_failure(self, ctx: TaskContext, exc: BaseException) -> None:
        """The handler raised (anything, including a timeout or a child process crash)."""

    def after_task(self, ctx: TaskContext, end: TaskEnd) -> None:
        """The attempt ended (every attempt that reached before_task ends here once)."""

    def on_submit(self, task_type: str, payload: Any, options: dict[str, Any]) -> None:
        """A task is about to be submitted through the App (handles, ctx.submit);
        `options` (priority, delay, ...) may be changed in place."""


class Chain:
    """Runs a list of middleware, isolating each hook's failures."""

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self.items = list(middleware)

    def __bool__(self) -> bool:
        return bool(self.items)

    def _call(self, m: Middleware, hook: str, *args: Any) -> None:
        try:
            getattr(m, hook)(*args)
        except Exception:
            log.exception("middleware %s.%s failed (ignored)", type(m).__name__, hook)

    def before_task(self, ctx: TaskContext, payload: Any) -> None:
        for m in self.items:
            self._call(m, "before_task", ctx, payload)

    def on_failure(self, ctx: TaskContext, exc: BaseException) -> None:
        for m in self.items:
            self._call(m, "on_failure", ctx, exc)

    def after_task(self, ctx: TaskContext, end: TaskEnd) -> None:
        for m in reversed(self.items):
            self._call(m, "after_task", ctx, end)

    def on_submit(self, task_type: str, payload: Any, options: dict[str, Any]) -> None:
        for m in self.items:
            self._call(m, "on_submit", task_type, payload, options)
