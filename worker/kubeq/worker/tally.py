"""Per-task-type outcome counts, kept in memory and added to Redis with each heartbeat.

`kubeq stats` and the dashboard read them (type_counters); submissions are counted by the
submit script itself. Counts are bounded by the app's registered types (Redis caps the
hash in any case), and a failed flush keeps them for the next one.
"""

from __future__ import annotations

from collections import Counter

from kubeq.worker.execution import Outcome

_EVENTS = {"completed": "completed", "retried": "retried", "dead": "dead", "cancelled": "cancelled"}


class TypeTally:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, out: Outcome) -> None:
        t, c = out.task_type, self._counts
        if out.duration is not None:
            c[(t, "runs")] += 1
            c[(t, "duration_ms")] += round(out.duration * 1000)
        if out.failed:
            c[(t, "failed")] += 1
        counter = _EVENTS.get(out.event)
        if counter is not None:
            c[(t, counter)] += 1

    def take(self) -> dict[tuple[str, str], int]:
        """Everything counted since the last take (for one flush)."""
        taken, self._counts = dict(self._counts), Counter()
        return taken

    def put_back(self, counts: dict[tuple[str, str], int]) -> None:
        """A flush failed: count these again next time."""
        self._counts.update(counts)
