"""Which event loop the worker process runs: uvloop where installed, else asyncio's own.

uvloop (the `kubeq[fast]` extra) roughly halves the loop's and the sockets' cost per task;
the stock loop keeps working and is chosen whenever uvloop is missing or refused.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Literal

LoopChoice = Literal["auto", "uvloop", "asyncio"]


class LoopUnavailable(RuntimeError):
    """event_loop=uvloop was asked for, but uvloop is not installed."""


def pick_loop(choice: LoopChoice, uvloop_installed: bool) -> Literal["uvloop", "asyncio"]:
    """The loop to run: `auto` takes uvloop when installed; an explicit `uvloop` without
    it is an error (silently running slower than configured would hide a broken image)."""
    if choice == "asyncio":
        return "asyncio"
    if uvloop_installed:
        return "uvloop"
    if choice == "uvloop":
        raise LoopUnavailable(
            "KUBEQ_EVENT_LOOP=uvloop but uvloop is not installed: pip install 'kubeq[fast]'"
        )
    return "asyncio"


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: LoopChoice) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The picked loop's name and a factory for asyncio.Runner."""
    name = pick_loop(choice, uvloop_installed())
    if name == "uvloop":
        import uvloop

        return name, uvloop.new_event_loop
    return name, asyncio.new_event_loop
