"""`kubeq bench` against a tiny in-test worker loop (not the worker runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubeq.cli.bench import percentiles
from kubeq.protocol import Client

Kubeq = Any


def test_percentiles_nearest_rank() -> None:
    assert percentiles([]) is None
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0}


def test_bench_submits_and_reports_json(kubeq: Kubeq, queue_client: Client) -> None:
    res = kubeq(
        "-o",
        "json",
        "-q",
        "default",  # a queue named explicitly: the bench's own is kubeq-bench
        "bench",
        "--tasks",
        "250",
        "--batch",
        "40",
        "--payload-size",
        "64",
        "-p",
        "low",
    )
    doc = json.loads(res.stdout)
    assert (doc["tasks"], doc["priority"], doc["payload_bytes"]) == (250, "low", 64)
    assert doc["submit"]["seconds"] > 0
    assert doc["submit"]["tasks_per_second"] > 0
    assert doc["completion"] is None
    stats = queue_client.stats()
    assert {lv.name: lv.ready for lv in stats.levels}["low"] == 250
    task_id = queue_client.claim("w", 1).tasks[0].id
    assert len(json.dumps(queue_client.status(task_id).payload, separators=(",", ":"))) == 64


def test_bench_waits_for_completion_and_reports_latency(kubeq: Kubeq, tiny_worker: Any) -> None:
    res = kubeq(
        "-o",
        "json",
        "-q",
        "default",  # a queue named explicitly: the bench's own is kubeq-bench
        "bench",
        "--tasks",
        "300",
        "--batch",
        "50",
        "--wait-completion",
        "--timeout",
        "60",
        "--sample",
        "100",
    )
    comp = json.loads(res.stdout)["completion"]
    assert (comp["finished"], comp["unfinished"]) == (300, 0)
    assert comp["sampled"] == 100
    assert comp["outcomes"] == {"completed": 100}
    assert comp["tasks_per_second"] > 0
    for key in ("end_to_end_ms", "queue_wait_ms"):
        p = comp[key]
        assert 0 <= p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
    assert tiny_worker.settled == 300


def test_bench_text_report_with_a_rate(kubeq: Kubeq, tiny_worker: Any) -> None:
    out = kubeq(
        "-q",
        "default",
        "bench",
        "--tasks",
        "20",
        "--batch",
        "5",
        "--rate",
        "2000",
        "--wait-completion",
        "--timeout",
        "60",
    ).stdout
    assert "submitted / s" in out
    assert "finished" in out
    assert "20 of 20" in out
    assert "end to end ms p50/p95/p99/max" in out


def test_bench_reports_unfinished_tasks_with_exit_4(kubeq: Kubeq) -> None:
    res = kubeq(
        "-o",
        "json",
        "-q",
        "default",
        "bench",
        "--tasks",
        "5",
        "--wait-completion",
        "--timeout",
        "0.3",
        code=4,
    )
    comp = json.loads(res.stdout)["completion"]
    assert (comp["finished"], comp["unfinished"], comp["tasks_per_second"]) == (0, 5, None)
    assert "5 of 5 tasks had not finished" in res.stderr


def test_bench_unknown_priority_exits_2_before_submitting(
    kubeq: Kubeq, queue_client: Client
) -> None:
    res = kubeq("-q", "default", "bench", "--tasks", "10", "-p", "urgent", code=2)
    assert "unknown priority 'urgent'" in res.stderr
    assert queue_client.stats().ready == 0


def test_bench_uses_its_own_queue_unless_one_is_named(
    kubeq: Kubeq, queue_client: Client, tmp_path: Path
) -> None:
    doc = json.loads(kubeq("-o", "json", "bench", "--tasks", "10").stdout)
    assert doc["queue"] == "default/kubeq-bench"
    assert queue_client.stats().ready == 0  # the default queue got nothing
    # the env file's queue (written by `kubeq up`) is not a deliberate choice either
    env_file = tmp_path / "env"
    env_file.write_text("KUBEQ_QUEUE=default\n")
    doc = json.loads(
        kubeq("-o", "json", "bench", "--tasks", "1", env={"KUBEQ_ENV_FILE": str(env_file)}).stdout
    )
    assert doc["queue"] == "default/kubeq-bench"
    doc = json.loads(kubeq("-o", "json", "bench", "-q", "default", "--tasks", "1").stdout)
    assert doc["queue"] == "default/default"


def test_bench_refuses_to_wait_on_its_own_queue_with_no_worker(kubeq: Kubeq) -> None:
    res = kubeq("bench", "--tasks", "10", "--wait-completion", code=2)
    assert "no worker serves queue default/kubeq-bench" in res.stderr
    assert "kubeq.examples.bench:app" in res.stderr


def test_bench_tasks_that_dead_letter_fail_the_bench_and_leave_no_dead_letters(
    kubeq: Kubeq, queue_client: Client, tiny_worker: Any
) -> None:
    # The tiny worker dead-letters every task of type "fail", as a worker without a
    # handler for the type would.
    res = kubeq(
        "-o",
        "json",
        "-q",
        "default",
        "bench",
        "--type",
        "fail",
        "--tasks",
        "30",
        "--wait-completion",
        "--timeout",
        "30",
        code=1,
    )
    assert json.loads(res.stdout)["completion"]["dead_lettered"] == 30
    assert "30 of the 30 bench tasks were dead-lettered" in res.stderr
    assert "handler for 'fail'" in res.stderr
    assert queue_client.stats().dead == 0
