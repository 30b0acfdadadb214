"""Errors the operator reports to users (on the TaskQueue's status and as Events)."""

from __future__ import annotations

from collections.abc import Iterable


class InvalidSpec(ValueError):
    """A TaskQueue spec the operator cannot act on.

    `problems` holds one "path: message" line per bad field, e.g.
    "spec.autoscaling.minReplicas: must be <= maxReplicas (12 > 10)", so the status
    condition and the Event can name every field at once instead of the first only.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("InvalidSpec needs at least one problem")
        count = len(self.problems)
        head = "invalid TaskQueue spec" + (f" ({count} problems)" if count > 1 else "")
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))
