"""Running one handler, and the ONE place its outcome becomes a protocol Settlement.

The contract (DESIGN.md invariant 15): `TaskRunner.execute` turns anything a handler does
into that attempt's outcome and never raises, with one exception: when the worker itself
stopped the job (`job.stop` set before it cancelled), CancelledError propagates and the
runtime decides (cancelled, released on drain, dropped when the lease was lost). A handler
that raises CancelledError, SystemExit, KeyboardInterrupt or GeneratorExit on its own has
failed an attempt like any other exception, so a release (which refunds the attempt) can
only come from the worker, and no handler can loop run -> release -> run.

success -> complete; Retry / a `retry_on` class -> retry with backoff (dead once attempts
run out); Permanent / a `permanent` class / anything outside `retry_on` -> dead; timeout ->
retry with reason timeout; unknown type, invalid payload (whatever the validator raised),
result that cannot be stored, malformed record -> dead with that reason. Building an
outcome cannot fail either: a builder that raises falls back to a minimal failure that
always encodes (`fallback`).

Executors: async handlers run on the event loop; sync handlers (and executor="process")
run in supervised child processes that are killed when the worker stops them
(children.py); executor="thread" runs in a thread that can only be asked to stop
(`ctx.stopped()`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import random
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from kubeq.app import App, TaskContext, TaskHandle
from kubeq.exceptions import Permanent, Retry
from kubeq.protocol import ClaimedTask, MalformedClaim, QueueOps, Settlement, TaskError
from kubeq.protocol.workflow import step_payload
from kubeq.worker.children import ChildPool, ResultNotSendable, StartMethod
from kubeq.worker.deadlines import Deadlines, Scope
from kubeq.worker.progress import ProgressBuffer

Event = Literal["completed", "retried", "dead", "cancelled", "released"]
MAX_TRACEBACK = 8000
MAX_MESSAGE = 2000
#: the longest delay a Retry(delay=...) may ask for; longer ones are capped
MAX_RETRY_DELAY = 7 * 24 * 3600.0


@dataclass(slots=True)
class Outcome:
    settlement: Settlement
    event: Event
    priority: str
    task_type: str
    attempt: int
    reason: str | None = None  # dead-letter reason label, or why a retry happens
    failed: bool = False  # the attempt failed (handler raised, timed out, bad input)
    duration: float | None = None  # seconds the handler ran
    #: a retry: after how many ms (by this worker's reckoning) it comes due again
    retry_in_ms: int | None = None


# -- pure helpers --------------------------------------------------------------------------


def clean_text(text: str, limit: int) -> str:
    """Valid UTF-8 whatever the input (lone surrogates escaped), at most `limit` chars."""
    return text[-limit:].encode("utf-8", "backslashreplace").decode("utf-8")


def _safe(fn: Callable[[], Any], fallback: str) -> str:
    try:
        return str(fn())
    except BaseException:  # an exception whose __str__ raises must not escape
        return fallback


def task_error(exc: BaseException) -> TaskError:
    """The stored error of an exception; never raises, always encodes."""
    remote = getattr(exc, "__kubeq_remote__", None)  # raised in a child process
    if isinstance(remote, tuple) and len(remote) == 3:
        name, message, tb = (str(x) for x in remote)
    else:
        name = _safe(lambda: type(exc).__qualname__, "BaseException")
        message = _safe(lambda: str(exc), f"<unprintable {name}>")
        tb = _safe(lambda: "".join(traceback.format_exception(exc)), f"{name}: {message}")
    return TaskError(
        type=clean_text(name, 200),
        message=clean_text(message[:MAX_MESSAGE], MAX_MESSAGE),
        traceback=clean_text(tb, MAX_TRACEBACK),
    )


def retry_delay(requested: object) -> float | None:
    """The delay a Retry asked for, or None (use the queue's backoff) when unusable.

    The ONE place a handler's retry delay is interpreted: inf, nan, negatives and
    non-numbers fall back to the backoff; a huge delay is capped at MAX_RETRY_DELAY.
    """
    if requested is None or isinstance(requested, bool):
        return None
    try:
        d = float(requested)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(d) or d < 0:
        return None
    return min(d, MAX_RETRY_DELAY)


def effective_max_attempts(record: int, queue_default: int, handler: int | None) -> int:
    """Precedence: per-task override > handler > queue.

    The record carries the queue default unless the producer gave max_attempts; a record
    value that differs from the queue default is taken as a per-task override. (Until the
    record marks explicit values, an override equal to the queue default is read as "not
    given" and the handler's value applies.)
    """
    if record != queue_default or handler is None:
        return record
    return handler


def _encodes(s: Settlement) -> None:
    """Raise now, for this task alone, what Redis would refuse for the whole batch."""
    s.outcome.encode("utf-8")


# -- the runner ----------------------------------------------------------------------------


class TaskRunner:
    def __init__(
        self,
        app: App,
        ops: QueueOps,
        *,
        queue: str,
        worker_id: str,
        clock: Callable[[], int] | None,
        rng: random.Random | None = None,
        default_timeout: float | None = None,
        thread_pool_size: int = 16,
        process_pool_size: int = 16,
        start_method: StartMethod = "spawn",
        child_max_tasks: int = 0,
        child_max_rss_bytes: int = 0,
        fanout: Any = None,
        progress: ProgressBuffer | None = None,
        log_config: tuple[str, str] | None = None,
        child_keepalive: float | None = None,
    ) -> None:
        self.app = app
        self.ops = ops
        self.queue = queue
        self.worker_id = worker_id
        # The client's clock may become None (Redis's own clock inside the scripts); the
        # times an outcome records then come from this host's clock.
        self.clock: Callable[[], int] = clock or _epoch_ms
        self.rng = rng or random.Random()
        self.default_timeout = default_timeout if default_timeout else app.default_timeout
        self.fanout = fanout  # ctx.submit for async handlers (kubeq.worker.fanout)
        self.deadlines = Deadlines()  # every running handler's timeout, one loop timer
        self.progress = progress  # where ctx.progress reports go (None: nowhere)
        self.threads = ThreadPoolExecutor(thread_pool_size, thread_name_prefix="kubeq-task")
        self._thread_slots = asyncio.Semaphore(thread_pool_size)
        modules = sorted(
            {h.__module__ for h in app.tasks.values() if h.options.executor == "process"}
        )
        self.children = ChildPool(
            process_pool_size,
            preload=modules,
            start_method=start_method,
            max_tasks=child_max_tasks,
            max_rss_bytes=child_max_rss_bytes,
            log_config=log_config,
            keepalive_timeout=child_keepalive,
        )

    def shutdown(self) -> None:
        """Without waiting for threads; child processes are killed (none may outlive us)."""
        self.children.shutdown()
        self.threads.shutdown(wait=False, cancel_futures=True)

    def max_attempts(self, claimed: ClaimedTask, handle: TaskHandle[..., Any] | None) -> int:
        handler = handle.options.max_attempts if handle is not None else None
        return effective_max_attempts(
            claimed.task.max_attempts, self.ops.config.max_attempts, handler
        )

    # -- running -------------------------------------------------------------------------

    async def execute(self, claimed: ClaimedTask, job: Attempt | None = None) -> Outcome:
        """Run the task's handler to an outcome; never raises, except CancelledError when
        `job.stop` says the worker itself stopped this job. Sets `job.ctx`."""
        holder = job if job is not None else _Detached()

        def stopped() -> object:
            return holder.stop

        started = time.perf_counter()
        try:
            return await self._execute(claimed, stopped, holder)
        except asyncio.CancelledError as exc:
            if stopped():
                raise
            out = self.on_exception(claimed, None, exc)  # the handler's own CancelledError
        except BaseException as exc:  # a bug between us and the handler: still an attempt
            out = self.on_exception(claimed, None, exc)
        out.duration = time.perf_counter() - started
        return out

    async def _execute(
        self, claimed: ClaimedTask, stopped: Callable[[], object], job: Attempt
    ) -> Outcome:
        task = claimed.task
        handle = self.app.tasks.get(task.type)
        if handle is None:
            err = TaskError(
                type="UnknownTaskType",
                message=clean_text(
                    f"no handler for task type {task.type!r} in app {self.app.name!r}", 500
                ),
            )
            return self._failure(claimed, err, permanent=True, reason="unknown_task_type")
        opts = handle.options
        payload: Any = step_payload(task)  # a workflow step may take its inputs' results
        if opts.payload_model is not None:
            try:
                payload = opts.payload_model.model_validate(payload)
            except Exception as exc:  # ValidationError, or whatever a validator raised
                e = task_error(exc)
                err = TaskError(type="InvalidPayload", message=e.message, traceback=e.traceback)
                return self._failure(
                    claimed, err, permanent=True, reason="invalid_payload", failed=True
                )
        ctx = TaskContext(
            task.id,
            task.attempts,
            self.max_attempts(claimed, handle),
            self.queue,
            task.priority,
            task.type,
        )
        ctx.headers = dict(task.headers or {})
        timeout = opts.timeout or self.default_timeout
        if opts.executor == "loop":
            ctx._fanout = self.fanout
        if self.progress is not None:
            ctx._report = functools.partial(self.progress.report, task.id, claimed.token)
        job.ctx = ctx
        hooks = self.app.middleware
        if hooks:
            hooks.before_task(ctx, payload)
        run = _Run(self.deadlines)
        try:
            ok, value = await self._run_handler(handle, payload, ctx, timeout, run)
        except TimeoutError as exc:
            ctx.stop()
            if run.scope is None or not run.scope.expired():
                ok, value = False, exc  # the handler's own TimeoutError
            else:
                err = TaskError(type="Timeout", message=f"handler exceeded its {timeout}s timeout")
                if hooks:
                    hooks.on_failure(ctx, exc)
                out = self._failure(claimed, err, reason="timeout", failed=True)
                out.duration = run.elapsed()
                return out
        except asyncio.CancelledError as exc:
            ctx.stop()
            if stopped():
                raise
            ok, value = False, exc
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit, ...
            ok, value = False, exc
        if not ok and hooks:
            hooks.on_failure(ctx, value)
        if ok:
            out = self.on_success(claimed, value)
        elif isinstance(value, ResultNotSendable):  # as a result that is not JSON: permanent
            out = self.result_not_stored(claimed, value)
        else:
            out = self.on_exception(claimed, handle, value)
        out.duration = run.elapsed()
        return out

    async def _run_handler(
        self,
        handle: TaskHandle[..., Any],
        payload: Any,
        ctx: TaskContext,
        timeout: float | None,
        run: _Run,
    ) -> tuple[bool, Any]:
        """(True, result) or (False, what a child reported); the timeout starts only once
        the handler starts: waiting for a free child or thread is not the task's time."""
        kind = handle.options.executor
        if kind == "process":
            # The child is killed if anything escapes; the scope starts once it is ready.
            async with self.children.child() as child, run.start(timeout):
                return await self.children.call(
                    child,
                    handle.__module__,
                    handle.__qualname__,
                    payload,
                    ctx.fields(),
                    ctx._report,
                )
        if kind == "thread":
            await self._thread_slots.acquire()
            loop = asyncio.get_running_loop()
            try:
                fut = loop.run_in_executor(
                    self.threads, functools.partial(_call, handle.fn, payload, ctx)
                )
            except BaseException:
                self._thread_slots.release()
                raise
            # The slot is the thread's until it returns, whether or not we still wait.
            fut.add_done_callback(lambda _: self._thread_slots.release())
            async with run.start(timeout):
                result: tuple[bool, Any] = await asyncio.shield(fut)
                return result
        async with run.start(timeout):
            return True, await handle.fn(payload, ctx)

    # -- outcomes ------------------------------------------------------------------------

    def _outcome(
        self,
        claimed: ClaimedTask,
        settlement: Settlement,
        event: Event,
        reason: str | None = None,
        failed: bool = False,
    ) -> Outcome:
        _encodes(settlement)
        t = claimed.task
        failed = failed or event in ("retried", "dead")  # every failure counts as one
        return Outcome(settlement, event, t.priority, t.type, t.attempts, reason, failed)

    def on_success(self, claimed: ClaimedTask, result: Any) -> Outcome:
        try:
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json")
            s = self.ops.completion(claimed, result, self.clock())
            return self._outcome(claimed, s, "completed")
        except Exception as exc:  # not JSON, too deep, too large, not UTF-8, ...
            return self.result_not_stored(claimed, exc)

    def result_not_stored(self, claimed: ClaimedTask, exc: BaseException) -> Outcome:
        """The handler returned, but its result cannot be stored: dead, never retried."""
        reason = "result_too_large" if type(exc).__name__ == "ResultTooLarge" else None
        e = task_error(exc)
        err = TaskError(
            type="ResultNotStored",
            message=f"the result cannot be stored: {e.type}: {e.message}"[:MAX_MESSAGE],
        )
        return self._failure(
            claimed, err, permanent=True, reason=reason or "result_not_json", failed=True
        )

    def on_exception(
        self, claimed: ClaimedTask, handle: TaskHandle[..., Any] | None, exc: BaseException
    ) -> Outcome:
        err = task_error(exc)
        if handle is None:  # the worker's own failure around the handler: retry it
            return self._failure(claimed, err, failed=True, reason="worker_error")
        opts = handle.options
        try:
            permanent = isinstance(exc, Permanent) or (
                not isinstance(exc, Retry)
                and (isinstance(exc, opts.permanent) or not isinstance(exc, opts.retry_on))
            )
        except BaseException:  # a hostile __instancecheck__
            permanent = True
        if permanent:
            return self._failure(
                claimed, err, permanent=True, reason="permanent_error", failed=True
            )
        delay = getattr(exc, "delay", None) if isinstance(exc, Retry) else None
        return self._failure(claimed, err, failed=True, delay=delay)

    def _failure(
        self,
        claimed: ClaimedTask,
        err: TaskError,
        *,
        permanent: bool = False,
        reason: str | None = None,
        failed: bool = False,
        delay: object = None,
    ) -> Outcome:
        """A failed attempt: retry or dead by the effective policy; never raises."""
        try:
            return self._build_failure(claimed, err, permanent, reason, failed, delay)
        except Exception as exc:
            return self.fallback(claimed, exc)

    def _build_failure(
        self,
        claimed: ClaimedTask,
        err: TaskError,
        permanent: bool,
        reason: str | None,
        failed: bool,
        delay: object,
    ) -> Outcome:
        now = self.clock()
        handle = self.app.tasks.get(claimed.task.type)
        effective = self.max_attempts(claimed, handle)
        policy_view = claimed
        if effective != claimed.task.max_attempts:
            policy_view = dataclasses.replace(
                claimed, task=claimed.task.model_copy(update={"max_attempts": effective})
            )
        s = self.ops.failure(
            policy_view,
            err,
            now,
            self.rng,
            permanent=permanent,
            reason=reason,
            delay=retry_delay(delay),
        )
        if s.action == "retry":
            out = self._outcome(claimed, s, "retried", reason, failed)
            out.retry_in_ms = self.retry_in_ms(s)
            return out
        label = reason or ("permanent_error" if permanent else "attempts_exhausted")
        return self._outcome(claimed, s, "dead", label, failed)

    @staticmethod
    def retry_in_ms(s: Settlement) -> int:
        """How long until a retry settlement comes due, counted by the settle script from
        Redis's clock (the one place that reads it)."""
        return max(0, int(s.delay_ms))

    def fallback(self, claimed: ClaimedTask, exc: BaseException) -> Outcome:
        """The minimal outcome when building the real one failed: plain ASCII, cannot fail
        to encode. A retry with backoff (the attempt counts) or dead once out of attempts."""
        name = _safe(lambda: type(exc).__name__, "Exception").encode("ascii", "replace").decode()
        err = TaskError(
            type="OutcomeError", message=f"the task's outcome could not be stored ({name})"
        )
        now = self.clock()
        s = self.ops.failure(claimed, err, now, self.rng, reason="outcome_error")
        event: Event = "retried" if s.action == "retry" else "dead"
        t = claimed.task
        out = Outcome(s, event, t.priority, t.type, t.attempts, "outcome_error", True)
        if event == "retried":
            out.retry_in_ms = self.retry_in_ms(s)
        return out

    def cancelled(self, claimed: ClaimedTask, reason: str = "cancel requested") -> Outcome:
        s = self.ops.completion(claimed, None, self.clock(), status="cancelled", reason=reason)
        return self._outcome(claimed, s, "cancelled", reason)

    def released(self, claimed: ClaimedTask) -> Outcome:
        return self._outcome(claimed, self.ops.release(claimed), "released", "drain")

    def malformed(self, m: MalformedClaim) -> Outcome:
        levels = self.ops.levels
        priority = levels[m.level_index - 1] if 0 < m.level_index <= len(levels) else "unknown"
        s = self.ops.dead_letter_malformed(m, self.worker_id, self.clock())
        return Outcome(s, "dead", priority, "unknown", m.attempts, "malformed_record", True)


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def _call(fn: Callable[..., Any], payload: Any, ctx: TaskContext) -> tuple[bool, Any]:
    """A handler call in a thread: its exception (any BaseException) becomes a value."""
    try:
        return True, fn(payload, ctx)
    except BaseException as exc:
        return False, exc


class Attempt(Protocol):
    """What the runtime and the runner share about one running attempt (a Job)."""

    stop: Any  # set by the worker BEFORE it cancels: why it stopped the attempt
    ctx: TaskContext | None


class _Detached:
    __slots__ = ("ctx", "stop")

    def __init__(self) -> None:
        self.stop: Any = None
        self.ctx: TaskContext | None = None


class _Run:
    """When the handler started and its timeout scope (None until it starts)."""

    __slots__ = ("deadlines", "scope", "started")

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self.scope: Scope | None = None
        self.started: float | None = None

    def start(self, timeout: float | None) -> Scope:
        self.started = time.perf_counter()
        self.scope = Scope(self.deadlines, timeout)
        return self.scope

    def elapsed(self) -> float | None:
        return None if self.started is None else time.perf_counter() - self.started
