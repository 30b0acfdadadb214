from __future__ import annotations

from pathlib import Path

import pytest

from kubeq_operator.core.errors import InvalidSpec
from kubeq_operator.local.runner import load_manifest
from kubeq_operator.local.scrape import delta, merge, parse, quantile

EXPOSITION = """
# TYPE kubeq_tasks_completed_total counter
kubeq_tasks_completed_total{queue="d/q",priority="a",task_type="x"} 3.0
kubeq_tasks_completed_total{queue="d/q",priority="b",task_type="x"} 4.0
# TYPE kubeq_task_queue_wait_seconds histogram
kubeq_task_queue_wait_seconds_bucket{queue="d/q",priority="a",le="0.1"} 5.0
kubeq_task_queue_wait_seconds_bucket{queue="d/q",priority="a",le="1.0"} 9.0
kubeq_task_queue_wait_seconds_bucket{queue="d/q",priority="a",le="+Inf"} 10.0
kubeq_task_queue_wait_seconds_count{queue="d/q",priority="a"} 10.0
kubeq_task_queue_wait_seconds_sum{queue="d/q",priority="a"} 3.0
"""


def test_parse_sums_counters_and_buckets_over_labels() -> None:
    sample = parse(EXPOSITION)
    assert sample.counters["kubeq_tasks_completed_total"] == 7.0
    assert sample.buckets["kubeq_task_queue_wait_seconds"] == {
        0.1: 5.0,
        1.0: 9.0,
        float("inf"): 10.0,
    }
    both = merge([sample, sample])
    assert both.counters["kubeq_tasks_completed_total"] == 14.0


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.1), (0.25, 0.05), (0.7, 0.55), (0.9, 1.0), (0.99, 1.0)],
)
def test_quantile_interpolates_within_buckets_like_prometheus(q: float, expected: float) -> None:
    buckets = {0.1: 5.0, 1.0: 9.0, float("inf"): 10.0}
    assert quantile(q, buckets) == pytest.approx(expected)


def test_quantile_of_nothing_is_none_and_deltas_never_go_negative() -> None:
    assert quantile(0.5, {}) is None
    assert quantile(0.5, {1.0: 0.0, float("inf"): 0.0}) is None
    assert delta({1.0: 3.0}, {1.0: 5.0}) == {1.0: 0.0}  # a restarted worker counts from 0


def test_manifests_without_a_task_queue_are_refused_clearly(tmp_path: Path) -> None:
    empty = tmp_path / "x.yaml"
    empty.write_text("kind: ConfigMap\nmetadata: {name: a}\n")
    with pytest.raises(InvalidSpec, match="no TaskQueue"):
        load_manifest(empty)
    broken = tmp_path / "y.yaml"
    broken.write_text("kind: TaskQueue\nmetadata: {name: a}\nspec: {worker: {}}\n")
    with pytest.raises(InvalidSpec, match=r"spec\.(redis|worker)"):
        load_manifest(broken)
