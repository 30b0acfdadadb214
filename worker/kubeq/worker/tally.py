"""Per-task-type outcome counts, kept in memory and added to Redis with each heartbeat.

`kubeq stats` and the dashboard read them (type_counters); submissions are counted by the
submit script itself. Counts are bounded by the app's registered types (Redis caps the
hash in any case), and a failed flush keeps them for the next one.
"""

from __future__ import annotations

from kubeq.worker.execution import Outcome

#: the counters of one task type, in the order `TypeTally` keeps them
_FIELDS = ("runs", "duration_ms", "failed", "completed", "retried", "dead", "cancelled")
_EVENT_INDEX = {"completed": 3, "retried": 4, "dead": 5, "cancelled": 6}


class TypeTally:
    def __init__(self) -> None:
        # One list of counters per type: one lookup per finished task, not one per counter.
        self._counts: dict[str, list[int]] = {}

    def add(self, out: Outcome) -> None:
        c = self._counts.get(out.task_type)
        if c is None:
            c = self._counts[out.task_type] = [0] * len(_FIELDS)
        if out.duration is not None:
            c[0] += 1
            c[1] += round(out.duration * 1000)
        if out.failed:
            c[2] += 1
        i = _EVENT_INDEX.get(out.event)
        if i is not None:
            c[i] += 1

    def take(self) -> dict[tuple[str, str], int]:
        """Everything counted since the last take (for one flush): zeros left out, except
        the duration of runs that took under a millisecond (a run has a duration)."""
        taken, self._counts = self._counts, {}
        return {
            (t, name): n
            for t, counts in taken.items()
            for name, n in zip(_FIELDS, counts, strict=True)
            if n or (name == "duration_ms" and counts[0])
        }

    def put_back(self, counts: dict[tuple[str, str], int]) -> None:
        """A flush failed: count these again next time."""
        for (t, name), n in counts.items():
            c = self._counts.get(t)
            if c is None:
                c = self._counts[t] = [0] * len(_FIELDS)
            c[_FIELDS.index(name)] += n
