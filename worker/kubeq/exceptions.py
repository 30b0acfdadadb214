"""Exceptions a task handler raises to steer what happens to its task."""

from __future__ import annotations

import math
from typing import Any


class Retry(Exception):
    """Retry this task (counting the attempt); after `delay` seconds if given, else backoff.

    Attempts still run out: the last allowed attempt raising Retry is dead-lettered.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and not (isinstance(delay, int | float) and 0 <= delay < math.inf):
            raise ValueError(f"Retry delay must be a finite number >= 0, got {delay!r}")
        self.delay = delay

    def __reduce__(self) -> tuple[Any, ...]:
        # Across a process boundary (a handler in a child process): keep the class (also a
        # subclass with its own __init__), the message, `delay` and any other attributes.
        return (_rebuild_retry, (type(self), self.args, dict(self.__dict__)))


class Permanent(Exception):
    """This task can never succeed: dead-letter it now, whatever attempts remain."""


def _rebuild_retry(cls: type[Retry], args: tuple[Any, ...], state: dict[str, Any]) -> Retry:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc
