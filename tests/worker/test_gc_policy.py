"""The worker's garbage-collector policy (kubeq.worker.gc_policy): fewer collections,
and cyclic garbage is still collected, in bounded rounds."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from kubeq.worker import gc_policy
from kubeq.worker.settings import WorkerSettings


def test_thresholds_and_the_way_back_to_pythons_own() -> None:
    assert gc_policy.thresholds(20_000) == (20_000, 10, 10)
    assert gc_policy.thresholds(0) is None
    assert WorkerSettings().gc_gen0_threshold == 20_000  # the default the worker runs with


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


def test_cyclic_garbage_is_still_collected_in_bounded_rounds() -> None:
    # A handler that leaves a reference cycle behind on every call (an exception kept with
    # its traceback does): under the policy the cycles are collected, never more than the
    # threshold's worth of objects waiting, and memory does not grow with the calls.
    out = _run(
        """
        import gc, weakref
        from kubeq.worker import gc_policy

        assert gc_policy.apply(5000)
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == (5000, 10, 10)

        class Node:
            pass

        alive, peak = [], 0
        for i in range(200_000):
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: reference counting alone never frees it
            if i % 1000 == 0:
                alive.append(weakref.ref(a))
            peak = max(peak, gc.get_count()[0])
        survivors = sum(r() is not None for r in alive[:-1])  # all but the newest round
        print(peak, survivors, len(alive))
        """
    )
    peak, survivors, sampled = map(int, out.split())
    assert peak <= 5000  # a round starts once the threshold's worth is allocated
    assert sampled == 200
    assert survivors <= 3  # only cycles made since the last round can still be alive


def test_threshold_zero_leaves_the_collector_alone() -> None:
    out = _run(
        """
        import gc
        from kubeq.worker import gc_policy
        before = gc.get_threshold()
        assert not gc_policy.apply(0)
        print(gc.get_threshold() == before, gc.get_freeze_count())
        """
    )
    assert out == "True 0"
