"""Supervised child processes for sync handlers: a handler the worker stops is killed.

One task at a time per child. The worker waits for a free, ready child before the task's
timeout starts (time spent waiting for a child or for its imports does not count), then
sends the call over a pipe and awaits the reply on the event loop. Whatever stops the wait
(timeout, cancel, lost lease, drain deadline, worker exit) kills that child with SIGKILL,
so the handler's code is no longer running and its slot is free; a fresh child is started
on demand. A child that dies mid-task (os.abort(), a segfault, os._exit) fails that task
with `ChildCrashed` and is replaced; the other children run on. Children are recycled
after `max_tasks` tasks or when their RSS passes `max_rss_bytes` (Celery's
max-tasks/max-memory per child). A child exits by itself when its worker dies or stops
pinging it for `keepalive_timeout` (half a lease): see `_exit_with_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import importlib
import logging
import multiprocessing
import os
import pickle
import select
import signal
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from typing import Any, Literal

log = logging.getLogger("kubeq.worker.children")
StartMethod = Literal["spawn", "forkserver"]
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
READY_TIMEOUT = 60.0


class ChildCrashed(Exception):
    """The child process running the handler died before it answered."""


class ResultNotSendable(Exception):
    """A handler in a child process returned a result that cannot be sent back (pickled)."""


class RemoteError(Exception):
    """A handler's exception that could not be sent back as itself (not picklable)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


# -- the child's side ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when its parent dies (the worker, under spawn)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


EXIT_WORKER_GONE = 70
EXIT_WORKER_SILENT = 71


def _exit_with_worker(conn: Connection, keepalive: Connection, timeout: float | None) -> None:
    """Exit the moment the worker is gone or frozen, even mid-task.

    Gone: its end of the pipe closes. Under forkserver the child's parent is the fork
    server, which outlives the worker while any child lives, so PR_SET_PDEATHSIG alone
    would leave a handler running after its worker was SIGKILLed. Frozen (SIGSTOP, a
    stalled host): its pings stop; after `timeout` (half a lease) the child exits, so the
    handler is gone before the reaper can hand its task to another worker. The worker
    never writes on `conn` while a task runs, so the only event there mid-task is EOF.
    """
    hangup = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
    poller = select.poll()
    poller.register(conn.fileno(), hangup)
    poller.register(keepalive.fileno(), select.POLLIN | hangup)
    wait_ms = None if timeout is None else max(1, int(timeout * 1000))
    while True:
        events = poller.poll(wait_ms)
        if not events:
            os._exit(EXIT_WORKER_SILENT)
        for fd, ev in events:
            if ev & hangup:
                os._exit(EXIT_WORKER_GONE)
            if fd == keepalive.fileno():
                with contextlib.suppress(EOFError, OSError):
                    while keepalive.poll():
                        keepalive.recv_bytes()


def _start_watchdog(conn: Connection, keepalive: Connection, timeout: float | None) -> None:
    threading.Thread(
        target=_exit_with_worker,
        args=(conn, keepalive, timeout),
        name="kubeq-watchdog",
        daemon=True,
    ).start()


def _text(fn: Any, fallback: str) -> str:
    try:
        return str(fn())
    except BaseException:
        return fallback


def describe(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """(pickled exception or None, type name, message, traceback): never raises."""
    name = _text(lambda: type(exc).__qualname__, "BaseException")
    message = _text(lambda: str(exc), f"<unprintable {name}>")
    tb = _text(lambda: "".join(traceback.format_exception(exc)), f"{name}: {message}")
    try:
        raw: bytes | None = pickle.dumps(exc)
        pickle.loads(pickle.dumps(exc))  # some exceptions pickle but cannot be rebuilt
    except BaseException:
        raw = None
    return raw, name, message, tb


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return getattr(obj, "fn", obj)  # a TaskHandle runs its function


def child_main(
    conn: Connection,
    preload: list[str],
    log_config: tuple[str, str] | None = None,
    keepalive: Connection | None = None,
    keepalive_timeout: float | None = None,
) -> None:
    """Loop: receive (module, qualname, payload, ctx fields), run, answer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the worker's to handle
    _die_with_parent()
    if log_config is not None:  # a handler's logs look like the worker's, on its stderr
        from kubeq.worker.logs import configure_logging

        configure_logging(*log_config)
    from kubeq.app import TaskContext

    for name in preload:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # reported with the first task that needs it
            log.warning("child could not preload %s: %r", name, exc)
    if keepalive is not None:  # after the imports: those may take longer than a ping
        _start_watchdog(conn, keepalive, keepalive_timeout)
    conn.send(("ready", os.getpid()))
    send_lock = threading.Lock()  # a handler may report progress from its own threads
    while True:
        try:
            module, qualname, payload, fields = conn.recv()
        except (EOFError, OSError):
            return
        ctx = TaskContext(**fields)
        ctx._report = functools.partial(_send_progress, conn, send_lock, ctx.task_id)
        try:
            result = _resolve(module, qualname)(payload, ctx)
        except BaseException as exc:
            conn.send(("raise", *describe(exc)))
            continue
        try:
            conn.send(("ok", result))
        except BaseException as exc:  # send pickles first: a failed send wrote nothing
            conn.send(("unsendable", *describe(exc)))


def _send_progress(conn: Connection, lock: threading.Lock, task_id: str, encoded: str) -> None:
    with lock:
        conn.send(("progress", task_id, encoded))


# -- the worker's side ---------------------------------------------------------------------


class Child:
    def __init__(
        self,
        mp: Any,
        preload: list[str],
        log_config: tuple[str, str] | None = None,
        keepalive_timeout: float | None = None,
    ) -> None:
        ours, theirs = mp.Pipe(duplex=True)
        ka_read, ka_write = mp.Pipe(duplex=False)
        self.proc = mp.Process(
            target=child_main,
            args=(theirs, preload, log_config, ka_read, keepalive_timeout),
            name="kubeq-handler",
            daemon=False,
        )
        self.proc.start()
        theirs.close()
        ka_read.close()
        self.conn: Connection = ours
        self.keepalive: Connection = ka_write
        self.tasks = 0
        self.ready = False

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    async def receive(self) -> Any:
        """The next message, awaited on the loop; ChildCrashed on EOF."""
        loop = asyncio.get_running_loop()
        fd = self.conn.fileno()
        if not self.conn.poll():
            readable: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise ChildCrashed(self.death()) from None

    def ping(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.keepalive.send_bytes(b"")

    def death(self) -> str:
        self.proc.join(1.0)
        code = self.proc.exitcode
        if code == EXIT_WORKER_SILENT:
            return "the handler's process stopped: the worker did not answer for half a lease"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"the handler's process died of {signal.Signals(-code).name}"
        return f"the handler's process exited with code {code}"

    def rss_bytes(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(self.pid, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        for pipe in (self.conn, self.keepalive):
            with contextlib.suppress(OSError):
                pipe.close()
        self.proc.join(2.0)
        if self.proc.exitcode is None:  # ignored its EOF: make sure
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.join(1.0)


def _kill_when_started(fut: asyncio.Future[Child]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().kill()


class ChildPool:
    def __init__(
        self,
        size: int,
        *,
        preload: list[str] | None = None,
        start_method: StartMethod = "spawn",
        max_tasks: int = 0,
        max_rss_bytes: int = 0,
        log_config: tuple[str, str] | None = None,
        keepalive_timeout: float | None = None,
    ) -> None:
        self.size = size
        self.log_config = log_config
        #: children exit when not pinged for this long (None: no pings needed)
        self.keepalive_timeout = keepalive_timeout
        self.preload = preload or []
        self.mp = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Children fork from a server that has imported these once: a replacement after
            # a kill is ready in milliseconds instead of re-importing the app.
            self.mp.set_forkserver_preload(["kubeq.worker.children", *self.preload])
        self.max_tasks = max_tasks
        self.max_rss_bytes = max_rss_bytes
        self._idle: list[Child] = []
        self._busy: set[Child] = set()
        self._sem = asyncio.Semaphore(size)
        self.started = 0  # children started, for tests and metrics
        self.recycled = 0
        self.closed = False

    @contextlib.asynccontextmanager
    async def child(self) -> AsyncIterator[Child]:
        """A ready child for one task; killed if the `with` body ends with any exception."""
        async with self._sem:
            child = await self._ready_child()
            self._busy.add(child)
            try:
                yield child
            except BaseException:
                self._busy.discard(child)
                child.kill()
                raise
            self._busy.discard(child)
            self._put_back(child)

    async def call(
        self,
        child: Child,
        module: str,
        qualname: str,
        payload: Any,
        fields: Any,
        on_progress: Callable[[str], None] | None = None,
    ) -> tuple[bool, Any]:
        """Run one handler call in `child`: (True, result) or (False, what it raised).

        A handler's exception is returned, not raised: it must not kill a healthy child.
        Progress reports arriving meanwhile go to `on_progress`.
        """
        child.conn.send((module, qualname, payload, fields))
        while True:
            kind, *rest = await child.receive()
            if kind != "progress":
                break
            # A thread the last handler left behind may still report: not this task's.
            if on_progress is not None and rest[0] == fields.get("task_id"):
                on_progress(rest[1])
        child.tasks += 1
        if kind == "ok":
            return True, rest[0]
        raw, name, message, tb = rest
        if kind == "unsendable":  # the handler returned, but its result cannot cross over
            return False, ResultNotSendable(f"{name}: {message}")
        exc: BaseException | None = None
        if raw is not None:
            with contextlib.suppress(BaseException):
                exc = pickle.loads(raw)
        if not isinstance(exc, BaseException):
            exc = RemoteError(name, message)
        with contextlib.suppress(BaseException):
            exc.__kubeq_remote__ = (name, message, tb)  # type: ignore[attr-defined]
        return False, exc

    async def _ready_child(self) -> Child:
        while self._idle:
            child = self._idle.pop()
            if child.proc.is_alive():
                return child
            child.close()
        # Off the loop: the first start also starts the forkserver, which imports the app.
        starting = asyncio.ensure_future(
            asyncio.to_thread(Child, self.mp, self.preload, self.log_config, self.keepalive_timeout)
        )
        try:
            child = await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(_kill_when_started)  # no orphan child
            raise
        self.started += 1
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                kind, _ = await child.receive()
        except BaseException:
            child.kill()
            raise
        child.ready = kind == "ready"
        return child

    def _put_back(self, child: Child) -> None:
        if self.closed:
            child.kill()
            return
        if (self.max_tasks and child.tasks >= self.max_tasks) or (
            self.max_rss_bytes and child.rss_bytes() > self.max_rss_bytes
        ):
            self.recycled += 1
            log.info("recycling handler process %d after %d tasks", child.pid, child.tasks)
            child.close()  # EOF: it exits by itself after its last task
            return
        self._idle.append(child)

    def ping(self) -> None:
        """Tell every child the worker is alive (see _exit_with_worker)."""
        for child in (*self._idle, *self._busy):
            child.ping()

    def pids(self) -> list[int]:
        return [c.pid for c in (*self._idle, *self._busy)]

    def shutdown(self) -> None:
        """Kill every child now: a handler still running must not outlive the worker."""
        self.closed = True
        deadline = time.monotonic() + 5
        for child in [*self._idle, *self._busy]:
            child.kill()
            if time.monotonic() > deadline:
                break
        self._idle.clear()
        self._busy.clear()
