"""Running one handler, and the ONE place its outcome becomes a protocol Settlement.

success -> complete; Retry / a `retry_on` class -> retry with backoff (dead once attempts
run out); Permanent / a `permanent` class / anything outside `retry_on` -> dead; timeout ->
retry with reason timeout; unknown type, invalid payload, result not JSON, malformed
record -> dead with that reason. Cancellation is not decided here: the runtime knows why
it stopped a handler and asks for `cancelled()` or `released()`.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import random
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from kubeq.app import App, TaskContext, TaskHandle, run_in_process
from kubeq.exceptions import Permanent, Retry
from kubeq.protocol import ClaimedTask, MalformedClaim, QueueOps, Settlement, TaskError
from kubeq.protocol.errors import ResultNotStorable

Event = Literal["completed", "retried", "dead", "cancelled", "released"]
MAX_TRACEBACK = 8000


@dataclass(slots=True)
class Outcome:
    settlement: Settlement
    event: Event
    priority: str
    task_type: str
    attempt: int
    reason: str | None = None  # dead-letter reason label, or why a retry happens
    failed: bool = False  # the handler raised
    duration: float | None = None  # seconds the handler ran


def task_error(exc: BaseException) -> TaskError:
    tb = "".join(traceback.format_exception(exc))
    return TaskError(
        type=type(exc).__qualname__, message=str(exc)[:2000], traceback=tb[-MAX_TRACEBACK:]
    )


class TaskRunner:
    def __init__(
        self,
        app: App,
        ops: QueueOps,
        *,
        queue: str,
        worker_id: str,
        clock: Callable[[], int],
        rng: random.Random | None = None,
        default_timeout: float | None = None,
        thread_pool_size: int = 16,
        process_pool_size: int = 0,
    ) -> None:
        self.app = app
        self.ops = ops
        self.queue = queue
        self.worker_id = worker_id
        self.clock = clock
        self.rng = rng or random.Random()
        self.default_timeout = default_timeout if default_timeout else app.default_timeout
        self.threads = ThreadPoolExecutor(thread_pool_size, thread_name_prefix="kubeq-task")
        self._process_pool_size = process_pool_size or os.cpu_count() or 1
        self._processes: ProcessPoolExecutor | None = None

    def _process_pool(self) -> Executor:
        if self._processes is None:
            # spawn, not fork: forking a process that runs threads and an event loop is unsafe.
            self._processes = ProcessPoolExecutor(
                self._process_pool_size, mp_context=multiprocessing.get_context("spawn")
            )
        return self._processes

    def shutdown(self) -> None:
        """Without waiting: a sync handler that ignored its stop must not hold up exit."""
        self.threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)

    # -- running -------------------------------------------------------------------------

    async def execute(self, claimed: ClaimedTask) -> Outcome:
        """Run the task's handler to an outcome. CancelledError propagates to the caller."""
        task = claimed.task
        handle = self.app.tasks.get(task.type)
        if handle is None:
            err = TaskError(
                type="UnknownTaskType",
                message=f"no handler for task type {task.type!r} in app {self.app.name!r}",
            )
            return self._failure(claimed, err, permanent=True, reason="unknown_task_type")
        opts = handle.options
        payload: Any = task.payload
        if opts.payload_model is not None:
            try:
                payload = opts.payload_model.model_validate(payload)
            except ValidationError as exc:
                err = TaskError(type="InvalidPayload", message=str(exc)[:2000])
                return self._failure(claimed, err, permanent=True, reason="invalid_payload")
        ctx = TaskContext(
            task.id, task.attempts, task.max_attempts, self.queue, task.priority, task.type
        )
        timeout = opts.timeout or self.default_timeout
        started = time.perf_counter()
        try:
            if timeout is None:
                result = await self._invoke(handle, payload, ctx)
            else:
                async with asyncio.timeout(timeout) as scope:
                    result = await self._invoke(handle, payload, ctx)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            duration = time.perf_counter() - started
            if timeout is not None and isinstance(exc, TimeoutError) and scope.expired():
                err = TaskError(type="Timeout", message=f"handler exceeded its {timeout}s timeout")
                out = self._failure(claimed, err, reason="timeout")
            else:
                out = self.on_exception(claimed, handle, exc)
            out.duration = duration
            return out
        out = self.on_success(claimed, result)
        out.duration = time.perf_counter() - started
        return out

    async def _invoke(self, handle: TaskHandle[..., Any], payload: Any, ctx: TaskContext) -> Any:
        kind = handle.options.executor
        if kind == "loop":
            return await handle.fn(payload, ctx)
        loop = asyncio.get_running_loop()
        if kind == "thread":
            return await loop.run_in_executor(
                self.threads, functools.partial(handle.fn, payload, ctx)
            )
        return await loop.run_in_executor(
            self._process_pool(),
            run_in_process,
            handle.__module__,
            handle.__qualname__,
            payload,
            ctx,
        )

    # -- outcomes ------------------------------------------------------------------------

    def _outcome(
        self,
        claimed: ClaimedTask,
        settlement: Settlement,
        event: Event,
        reason: str | None = None,
        failed: bool = False,
    ) -> Outcome:
        t = claimed.task
        return Outcome(settlement, event, t.priority, t.type, t.attempts, reason, failed)

    def on_success(self, claimed: ClaimedTask, result: Any) -> Outcome:
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        try:
            s = self.ops.completion(claimed, result, self.clock())
        except ResultNotStorable as exc:
            err = TaskError(type=type(exc).__name__, message=str(exc))
            return self._failure(claimed, err, permanent=True, reason="result_not_json")
        return self._outcome(claimed, s, "completed")

    def on_exception(
        self, claimed: ClaimedTask, handle: TaskHandle[..., Any], exc: BaseException
    ) -> Outcome:
        opts = handle.options
        err = task_error(exc)
        if isinstance(exc, Permanent) or (
            not isinstance(exc, Retry)
            and (isinstance(exc, opts.permanent) or not isinstance(exc, opts.retry_on))
        ):
            return self._failure(
                claimed, err, permanent=True, reason="permanent_error", failed=True
            )
        delay = exc.delay if isinstance(exc, Retry) else None
        return self._failure(claimed, err, failed=True, delay=delay)

    def _failure(
        self,
        claimed: ClaimedTask,
        err: TaskError,
        *,
        permanent: bool = False,
        reason: str | None = None,
        failed: bool = False,
        delay: float | None = None,
    ) -> Outcome:
        now = self.clock()
        s = self.ops.failure(
            claimed, err, now, self.rng, permanent=permanent, reason=reason, delay=delay
        )
        if s.action == "retry":
            return self._outcome(claimed, s, "retried", reason, failed)
        label = reason or ("permanent_error" if permanent else "attempts_exhausted")
        return self._outcome(claimed, s, "dead", label, failed)

    def cancelled(self, claimed: ClaimedTask, reason: str = "cancel requested") -> Outcome:
        s = self.ops.completion(claimed, None, self.clock(), status="cancelled", reason=reason)
        return self._outcome(claimed, s, "cancelled", reason)

    def released(self, claimed: ClaimedTask) -> Outcome:
        return self._outcome(claimed, self.ops.release(claimed), "released", "drain")

    def malformed(self, m: MalformedClaim) -> Outcome:
        levels = self.ops.levels
        priority = levels[m.level_index - 1] if 0 < m.level_index <= len(levels) else "unknown"
        s = self.ops.dead_letter_malformed(m, self.worker_id, self.clock())
        return Outcome(s, "dead", priority, "unknown", m.attempts, "malformed_record")
