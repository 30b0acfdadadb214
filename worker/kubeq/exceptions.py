"""Exceptions a task handler raises to steer what happens to its task."""

from __future__ import annotations


class Retry(Exception):
    """Retry this task (counting the attempt); after `delay` seconds if given, else backoff.

    Attempts still run out: the last allowed attempt raising Retry is dead-lettered.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and delay < 0:
            raise ValueError(f"Retry delay must not be negative, got {delay}")
        self.delay = delay


class Permanent(Exception):
    """This task can never succeed: dead-letter it now, whatever attempts remain."""
