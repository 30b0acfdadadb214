"""The worker's garbage-collector policy (kubeq.worker.gc_policy): fewer collections,
and cyclic garbage is still collected, in bounded rounds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from worker_support import WorkerProcess, queue_config, wait_until

from kubeq.protocol import Client
from kubeq.worker import gc_policy
from kubeq.worker.settings import WorkerSettings


def test_thresholds_and_the_way_back_to_pythons_own() -> None:
    assert gc_policy.thresholds(20_000) == (20_000, 10, 10)
    assert gc_policy.thresholds(0) is None
    assert WorkerSettings().gc_gen0_threshold == 20_000  # the default the worker runs with


def test_the_memory_trigger_collects_once_memory_grew_by_its_bound() -> None:
    mb = 2**20
    rss = [100 * mb]
    collected: list[int] = []

    def collect() -> None:
        collected.append(rss[0])
        rss[0] -= 30 * mb  # a collection frees some; the baseline is what is left

    t = gc_policy.MemoryTrigger(lambda: rss[0], collect, growth_mb=64, every=4)
    rss[0] += 63 * mb
    assert not any(t.task_finished() for _ in range(8))  # below the bound: never
    rss[0] += 1 * mb  # 164 MB: 64 above the baseline
    assert [t.task_finished() for _ in range(4)] == [False, False, False, True]  # 4th reads
    assert collected == [164 * mb]
    assert t.baseline == 134 * mb
    rss[0] += 63 * mb
    assert not any(t.task_finished() for _ in range(8))
    assert t.collections == 1
    assert gc_policy.should_collect(200, 100, 100)
    assert not gc_policy.should_collect(199, 100, 100)


def test_an_unreadable_rss_never_collects() -> None:
    t = gc_policy.MemoryTrigger(lambda: 0, lambda: pytest.fail("collected"), every=1)
    assert not any(t.task_finished() for _ in range(100))


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


@pytest.mark.slow
def test_cyclic_garbage_holding_memory_cannot_pile_up_to_the_threshold(
    redis_url: str, tmp_path: Path
) -> None:
    """An attack on the policy: a handler whose every run leaves a cycle holding 1 MB. A
    youngest generation of 20,000 objects would let ~10,000 such cycles (10 GB) wait for
    a collection; the worker also collects once its memory grew by RSS_GROWTH_MB, so
    1,500 of them never hold more than about that much."""
    limit = getattr(gc_policy, "RSS_GROWTH_MB", 64)
    config = queue_config()
    w = WorkerProcess(redis_url, config, tmp_path, concurrency=8)
    try:
        w.wait_ready()
        with Client.from_url(redis_url, config.name, config=config) as client:
            baseline = _peak_rss_mb(w.pid)
            ids = client.submit_many(
                [{"type": "leaks_cycle", "payload": {"bytes": 1_000_000}}] * 1500
            )
            wait_until(
                lambda: client.stats().counters.get("completed", 0) >= len(ids),
                120,
                "every leaking task completed",
            )
        grown = _peak_rss_mb(w.pid) - baseline
        # The bound plus one check interval's worth of leaks (32 tasks) and slack; without
        # the memory trigger this grows by ~1,500 MB.
        assert grown < limit + 32 + 100, (grown, w.log()[-2000:])
    finally:
        w.stop()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_rss_bytes_follows_the_process_and_a_forked_child_reads_its_own() -> None:
    import os

    from kubeq.worker.runtime import rss_bytes

    def statm() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss_bytes()
    assert abs(before - statm()) < 8 * 2**20
    ballast = bytearray(64 * 2**20)  # zeroed, so touched: resident
    grown = rss_bytes()
    assert grown - before >= 60 * 2**20
    assert abs(grown - statm()) < 8 * 2**20
    del ballast
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child grows; the fd the parent opened would report the parent
        try:
            os.close(r)
            base = rss_bytes()
            own = bytearray(48 * 2**20)
            os.write(w, str(rss_bytes() - base).encode())
            del own
        finally:
            os._exit(0)
    os.close(w)
    child_growth = int(os.read(r, 64))
    os.waitpid(pid, 0)
    os.close(r)
    assert child_growth >= 40 * 2**20
