"""Progress reports of running handlers, buffered and written to Redis in batches.

`ctx.progress(value)` only records the latest encoded value here (any thread may call it;
child processes forward theirs over their pipe). The worker's progress loop writes what
changed once per interval in one script call, so a handler reporting in a tight loop
costs no round trip per call and each task's progress is written at most once per
interval: the latest value wins. The script is fenced by the lease, and settle and reap
delete a task's progress, so a value flushed after its task ended is dropped, not leaked.
"""

from __future__ import annotations

import threading

#: Seconds between two flushes: at most one progress write per task per interval.
PROGRESS_INTERVAL = 1.0

Report = tuple[str, int, str]  # task id, lease token, value JSON


class ProgressBuffer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[int, str]] = {}

    def report(self, task_id: str, token: int, encoded: str) -> None:
        """Keep `encoded` as the task's latest value (replacing one not yet written)."""
        with self._lock:
            self._latest[task_id] = (token, encoded)

    def forget(self, task_id: str, token: int) -> None:
        """The attempt ended: a value not yet written is not worth writing."""
        if task_id not in self._latest:
            # Most tasks report nothing: no lock for them. A report racing this check is
            # of an attempt that has ended; its write is fenced by the lease and dropped.
            return
        with self._lock:
            if self._latest.get(task_id, (None,))[0] == token:
                del self._latest[task_id]

    def take(self) -> list[Report]:
        """Every value reported since the last take, one per task."""
        with self._lock:
            taken, self._latest = self._latest, {}
        return [(tid, token, value) for tid, (token, value) in taken.items()]

    def put_back(self, reports: list[Report]) -> None:
        """A flush failed: write these next time, unless a newer value came meanwhile."""
        with self._lock:
            for tid, token, value in reports:
                self._latest.setdefault(tid, (token, value))

    def __len__(self) -> int:
        with self._lock:
            return len(self._latest)
