"""The worker process's garbage-collector policy: fewer, cheaper collections.

CPython collects its youngest generation every 700 net allocations of tracked objects. A
worker at full speed allocates a few dozen per task that live as long as the task (a few
milliseconds), so a collection runs every ~20 tasks and promotes the objects of the tasks
then in flight; those promotions in turn trigger full collections, which walk every object
of the process (~50,000 after start-up), several times a second. Almost none of it is
cyclic garbage: reference counting frees a task's objects when it ends. On the peer drain
(bench/peers, seven interleaved reps) Python's policy cost 130 against 108 ms of
worker CPU per 1,000 tasks.

So the objects alive once the app is loaded (modules, the app, settings) are frozen out of
every collection, and the youngest generation is collected every `gen0` allocations. Cyclic
garbage (an exception's traceback, say) is still collected, only in larger rounds: at most
`gen0` objects wait for it. KUBEQ_GC_GEN0_THRESHOLD=0 keeps Python's own policy.

The thresholds count objects, not bytes: a handler whose every run leaves a cycle holding a
megabyte would let ~10,000 of them (10 GB) wait for a round. So the worker also collects
once its RSS grew by RSS_GROWTH_MB since the last collection, read every CHECK_EVERY
finished tasks (`task_finished`).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

#: generations 1 and 2 are collected every this many collections of the one below (as
#: CPython's defaults); with a larger youngest generation that is rarely enough
OLDER_THRESHOLD = 10


def thresholds(gen0: int) -> tuple[int, int, int] | None:
    """The collector thresholds for a youngest-generation threshold of `gen0`; None for
    "leave Python's own" (gen0 0)."""
    if gen0 <= 0:
        return None
    return gen0, OLDER_THRESHOLD, OLDER_THRESHOLD


#: MiB the process may grow by between two collections before the worker collects itself
RSS_GROWTH_MB = 64
#: finished tasks between two readings of the RSS (one read of /proc/self/statm)
CHECK_EVERY = 32


def should_collect(rss: int, baseline: int, growth_bytes: int) -> bool:
    """Whether memory grew enough since the last collection (`baseline`) to collect now."""
    return rss - baseline >= growth_bytes


class MemoryTrigger:
    """Collects when the RSS grew by `growth_mb` since the last collection, reading it once
    every `every` finished tasks."""

    def __init__(
        self,
        read_rss: Callable[[], int],
        collect: Callable[[], object] = gc.collect,
        growth_mb: int = RSS_GROWTH_MB,
        every: int = CHECK_EVERY,
    ) -> None:
        self.read_rss = read_rss
        self.collect = collect
        self.growth = growth_mb * 2**20
        self.every = every
        self.baseline = read_rss()
        self.collections = 0
        self._count = 0

    def task_finished(self) -> bool:
        """Count one finished task; True when this call collected."""
        self._count += 1
        if self._count < self.every:
            return False
        self._count = 0
        rss = self.read_rss()
        if rss <= 0 or not should_collect(rss, self.baseline, self.growth):
            return False
        self.collect()
        self.collections += 1
        self.baseline = self.read_rss()  # freed memory may stay with the process
        return True


_trigger: MemoryTrigger | None = None


def task_finished() -> None:
    """The worker finished a task (a no-op unless `apply` set the policy)."""
    if _trigger is not None:
        _trigger.task_finished()


def apply(gen0: int, read_rss: Callable[[], int] | None = None) -> bool:
    """Freeze what is alive now and set the thresholds (and, given `read_rss`, the memory
    trigger); False when told to leave the collector alone. Call once the app is loaded,
    before serving."""
    global _trigger
    wanted = thresholds(gen0)
    if wanted is None:
        return False
    if read_rss is not None:
        _trigger = MemoryTrigger(read_rss)
    # No gc.collect() first: start-up leaves next to no cyclic garbage (0 objects, measured
    # with the peer bench's app) and a full collection would cost ~17 ms of start-up.
    gc.freeze()
    gc.set_threshold(*wanted)
    return True
