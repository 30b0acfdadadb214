"""The peer benchmark (issue 12): summaries, percentiles, the interleaved schedule,
parsing the apps' reports, the tables, and that the floor row runs its body exactly n
times. Timings are never checked here."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.peers.report import markdown, own_work, tables
from bench.peers.run import drain
from bench.peers.stats import last_json, percentile, ratio, schedule, summarize
from bench.peers.systems import systems

from kubeq.redis_server import RedisServer


def test_summary_is_median_min_max_of_what_was_measured() -> None:
    s = summarize([3.0, None, 1.0, 2.0])
    assert s is not None
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert summarize([None, None]) is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError, match="within"):
        percentile(values, 1.5)


def test_schedule_interleaves_every_system_each_round_and_rotates() -> None:
    got = schedule(["a", "b", "c"], 3)
    assert [s for r, s in got if r == 0] == ["a", "b", "c"]
    assert [s for r, s in got if r == 1] == ["b", "c", "a"]
    assert [s for r, s in got if r == 2] == ["c", "a", "b"]
    with pytest.raises(ValueError, match="reps"):
        schedule(["a"], 0)


def test_the_report_is_the_last_json_line_whatever_was_logged_before() -> None:
    out = 'starting\n{"n": 1, "rate": 5.0}\nnot json {\n{"n": 2, "rate": 7.5}\ntrailing log\n'
    assert last_json(out) == {"n": 2, "rate": 7.5}
    with pytest.raises(ValueError, match="no JSON report"):
        last_json("only logs\n[1, 2]\n")


def test_ratio_needs_both_sides() -> None:
    a, b = summarize([10.0]), summarize([4.0])
    assert ratio(a, b) == 2.5
    assert ratio(a, None) is None


def _drain(system: str, rate: float, final: int = 100, cpu: float = 0.1) -> dict[str, object]:
    return {
        "kind": "drain", "system": system, "n": 100, "done": 100, "final": final,
        "rate": rate, "startup_s": 0.3, "rss_main_mb": 40.0, "rss_tree_mb": 80.0,
        "redis_cpu_s_per_1000": 0.02, "worker_cpu_s_per_1000": cpu, "timed_out": False,
    }  # fmt: skip


def test_tables_rank_by_median_and_count_lost_and_duplicated_tasks() -> None:
    records = [
        _drain("bullmq", 10.0),
        _drain("kubeq", 30.0),
        _drain("bullmq", 20.0),
        _drain("kubeq", 12.0, final=101),  # one task ran twice
        _drain("slow", 1.0, final=99),  # one lost
        {"kind": "bulk", "system": "kubeq", "rate": 50.0, "api": "submit_many"},
    ]
    drain, lat, bulk = tables(records)
    assert [row["system"] for row in drain] == ["kubeq", "bullmq", "slow"]
    assert drain[0]["rate"].median == 21.0
    assert (drain[0]["lost"], drain[0]["dup"]) == (0, 1)
    assert (drain[2]["lost"], drain[2]["dup"]) == (1, 0)
    assert lat == []
    assert bulk[0]["rate"].median == 50.0
    text = markdown({"records": records})
    assert "| kubeq | 21 (12-30) | 1.40x |" in text


def test_own_work_is_worker_cpu_beyond_the_floor_of_the_same_runtime() -> None:
    records = [
        _drain("bullmq", 10.0, cpu=0.080),
        _drain("kubeq", 8.0, cpu=0.120),
        _drain("kubeq", 7.0, cpu=0.130),
        _drain("floor-python", 14.0, cpu=0.070),
        _drain("floor-node", 60.0, cpu=0.020),
        _drain("taskiq", 1.0, cpu=0.600),  # no floor of its own: left out
    ]
    floors = {"kubeq": "floor-python", "bullmq": "floor-node", "taskiq": "floor-missing"}
    own = {o["system"]: o for o in own_work(tables(records)[0], floors)}
    assert sorted(own) == ["bullmq", "kubeq"]
    assert own["kubeq"]["own"] == pytest.approx(125 - 70)
    assert own["bullmq"]["own"] == pytest.approx(80 - 20)
    text = markdown({"records": records}, floors)
    assert "| kubeq | 125 | 70 (floor-python) | 55 | 1.40x |" in text
    # The project's own mapping: both kubeq rows against the Python floor, BullMQ Node's.
    assert {n: s.floor for n, s in systems().items() if s.floor} == {
        "kubeq": "floor-python",
        "kubeq-stock-gc": "floor-python",
        "bullmq": "floor-node",
    }


def test_the_python_floor_runs_the_body_exactly_n_times(tmp_path: Path) -> None:
    """The floor row (the body alone, no queue) goes through the harness's own drain: its
    counter must reach n and stay there, or its rate would not be the body's ceiling."""
    server = RedisServer().start()
    try:
        rec = drain(systems()["floor-python"], server.url, 300, timeout=30, logdir=tmp_path)
    finally:
        server.stop()
    assert (rec["done"], rec["final"], rec["timed_out"]) == (300, 300, False)
