"""bench/autoscale's pure parts: what a run is charged and how runs are summarized.
Timings are never checked here."""

from __future__ import annotations

import pytest
from bench.autoscale import (
    TIMELINE_FIELDS,
    need_steps,
    queue_shape,
    replica_seconds,
    summarize,
    zero_wait_floor,
)


def sample(at: float, ready: int, draining: int = 0) -> list[float]:
    row = [0.0] * len(TIMELINE_FIELDS)
    row[:3] = [at, ready, draining]
    return row


def test_replica_seconds_count_draining_workers_and_stop_where_asked() -> None:
    timeline = [sample(0, 1), sample(10, 3), sample(20, 1, draining=2), sample(25, 1)]
    # 1 x 10 s + 3 x 10 s + (1 + 2 draining) x 5 s + 1 x 5 s (the last value holds)
    assert replica_seconds(timeline, 30) == pytest.approx(10 + 30 + 15 + 5)
    # Cut inside an interval: only the part before it counts.
    assert replica_seconds(timeline, 15) == pytest.approx(10 + 15)
    assert replica_seconds(timeline, 0) == 0
    assert replica_seconds([], 10) == 0


def run(rule: str, rs: float, to_done: float, p95: float, long_p95: float) -> dict[str, object]:
    return {
        "trace": "t",
        "rule": rule,
        "replica_seconds": rs,
        "replica_seconds_to_done": to_done,
        "done_at_seconds": 70.0,
        "zero_wait_floor_replica_seconds": rs - 10,
        "queue_wait_ms": {"p95": p95, "p99": p95},
        "long_task_wait_ms": {"p95": long_p95},
        "interrupted": 0,
        "repeated_claims": 0,
        "unfinished_at_trace_end": 0,
    }


def test_summary_reports_both_costs_as_median_min_max() -> None:
    runs = [run("a", 100, 120, 5, 50), run("a", 90, 95, 7, 70), run("a", 110, 130, 6, 60)]
    s = summarize(runs)["t"]["a"]
    assert s["runs"] == 3
    assert s["replica_seconds"] == {"median": 100, "min": 90, "max": 110}
    assert s["replica_seconds_to_done"] == {"median": 120, "min": 95, "max": 130}
    assert s["long_task_p95_wait_ms"] == {"median": 60, "min": 50, "max": 70}
    assert s["zero_wait_floor_replica_seconds"] == {"median": 90, "min": 80, "max": 100}


def test_zero_wait_floor_is_the_workers_running_tasks_need_plus_the_cooldown() -> None:
    # One 10 s task, 10 slots a worker: one worker for 10 s, then the 5 s cooldown.
    assert zero_wait_floor([(0, 10)], concurrency=10, cooldown=5, horizon=30) == 15
    # Eleven at once need two workers.
    assert zero_wait_floor([(0, 10)] * 11, 10, 5, 30) == 2 * 10 + 5
    # One slot a worker, overlapping tasks: 1 worker 0-5, 2 workers 5-10, 1 worker 10-15.
    assert zero_wait_floor([(5, 10), (0, 10)], 1, 5, 30) == 5 + 10 + 5 + 5
    # A gap costs nothing: workers can leave while nothing runs.
    assert zero_wait_floor([(0, 2), (10, 2)], 1, 0, 12) == 4
    # The cooldown is counted only until the horizon, and not at all past it.
    assert zero_wait_floor([(0, 10)], 10, 5, 12) == 12
    assert zero_wait_floor([(0, 10)], 10, 5, 8) == 10


def test_need_steps_follow_the_running_tasks() -> None:
    # Two slots a worker: 1 task -> 1 worker, 3 -> 2, back to 1, then none.
    tasks = [(0, 10), (1, 2), (2, 4)]
    assert need_steps(tasks, 2) == [(0, 1), (1, 1), (2, 2), (3, 1), (6, 1), (10, 0)]


def test_the_floor_uses_the_benchmarks_own_queue() -> None:
    assert queue_shape() == (10, 30.0)
