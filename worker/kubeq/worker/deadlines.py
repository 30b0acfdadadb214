"""One deadline structure for every running handler's timeout, instead of one
`asyncio.timeout` (a loop timer pushed onto the loop's heap and cancelled again) per task.

Handlers share a few distinct timeouts (one per task type, or the worker's default), so
the deadlines of one timeout length, appended as handlers start, are already in order: a
FIFO per length is sorted by construction, adding is an append, and ONE loop timer,
armed at the earliest head, serves them all. Finished entries are skipped lazily and
compacted once they outnumber the live ones, so memory stays proportional to the
handlers running, whatever the timeout.

`Scope` keeps asyncio.timeout's contract: when its deadline passes the task is
cancelled, and the CancelledError leaving the scope becomes TimeoutError, unless
someone else cancelled the task too (that cancellation wins and propagates).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

PENDING, EXPIRED, DONE = 0, 1, 2


class Entry:
    __slots__ = ("at", "state", "task")

    def __init__(self, at: float, task: asyncio.Task[object]) -> None:
        self.at = at
        self.task = task
        self.state = PENDING


class Deadlines:
    """Deadlines on one event loop's clock; one armed loop timer at most."""

    def __init__(self) -> None:
        self._fifos: dict[float, deque[Entry]] = {}
        self._live: dict[float, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")

    def __len__(self) -> int:
        return sum(self._live.values())

    def add(self, timeout: float, task: asyncio.Task[object]) -> Entry:
        loop = task.get_loop()
        entry = Entry(loop.time() + timeout, task)
        fifo = self._fifos.get(timeout)
        if fifo is None:
            fifo = self._fifos[timeout] = deque()
            self._live[timeout] = 0
        fifo.append(entry)
        self._live[timeout] += 1
        if entry.at < self._armed_at:
            self._arm(loop, entry.at)
        return entry

    def done(self, timeout: float, entry: Entry) -> None:
        """The handler left its scope (returned, raised, or expired)."""
        if entry.state == PENDING:
            self._live[timeout] -= 1
        entry.state = DONE
        fifo = self._fifos[timeout]
        while fifo and fifo[0].state == DONE:
            fifo.popleft()
        live = self._live[timeout]
        if len(fifo) > 2 * live + 32:  # a long-running head holds finished ones behind it
            self._fifos[timeout] = deque(e for e in fifo if e.state != DONE)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = at
        self._timer = loop.call_at(at, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._armed_at = None, float("inf")
        now = loop.time()
        earliest = float("inf")
        for timeout, fifo in self._fifos.items():
            while fifo and (fifo[0].state != PENDING or fifo[0].at <= now):
                entry = fifo.popleft()
                if entry.state == PENDING:
                    entry.state = EXPIRED
                    self._live[timeout] -= 1
                    entry.task.cancel()
            if fifo:
                earliest = min(earliest, fifo[0].at)
        if earliest != float("inf"):
            self._arm(loop, earliest)


class Scope:
    """`async with Scope(deadlines, timeout)`: asyncio.timeout on the shared structure.
    A timeout of None (no limit) registers nothing."""

    __slots__ = ("_cancelling", "_deadlines", "_entry", "_expired", "_task", "timeout")

    def __init__(self, deadlines: Deadlines, timeout: float | None) -> None:
        self._deadlines = deadlines
        self.timeout = timeout
        self._entry: Entry | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    def expired(self) -> bool:
        """Whether the deadline passed (and the scope cancelled the task)."""
        return self._expired or (self._entry is not None and self._entry.state == EXPIRED)

    async def __aenter__(self) -> Scope:
        if self.timeout is not None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("a timeout scope needs a running task")
            self._task = task
            self._cancelling = task.cancelling()
            self._entry = self._deadlines.add(self.timeout, task)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        if entry is None or self.timeout is None or self._task is None:
            return
        expired = self._expired = entry.state == EXPIRED
        self._deadlines.done(self.timeout, entry)
        # Like asyncio.timeout: our own cancellation is taken back; only if nobody else
        # cancelled the task as well does it become a TimeoutError.
        if (
            expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
