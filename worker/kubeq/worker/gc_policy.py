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
"""

from __future__ import annotations

import gc

#: generations 1 and 2 are collected every this many collections of the one below (as
#: CPython's defaults); with a larger youngest generation that is rarely enough
OLDER_THRESHOLD = 10


def thresholds(gen0: int) -> tuple[int, int, int] | None:
    """The collector thresholds for a youngest-generation threshold of `gen0`; None for
    "leave Python's own" (gen0 0)."""
    if gen0 <= 0:
        return None
    return gen0, OLDER_THRESHOLD, OLDER_THRESHOLD


def apply(gen0: int) -> bool:
    """Freeze what is alive now and set the thresholds; False when told to leave the
    collector alone. Call once the app is loaded, before serving."""
    wanted = thresholds(gen0)
    if wanted is None:
        return False
    # No gc.collect() first: start-up leaves next to no cyclic garbage (0 objects, measured
    # with the peer bench's app) and a full collection would cost ~17 ms of start-up.
    gc.freeze()
    gc.set_threshold(*wanted)
    return True
