"""`kubeq tasks list`, `retry`, `pause`/`resume`, `dlq requeue|purge --reason/--type`."""

from __future__ import annotations

import json
from typing import Any

from kubeq.protocol import Client, TaskStatus

Kubeq = Any


def test_tasks_list_pages_with_a_cursor_until_the_end(kubeq: Kubeq, queue_client: Client) -> None:
    ids = queue_client.submit_many([{"type": "t", "payload": i} for i in range(5)])
    queue_client.submit("other")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        args = ["-o", "json", "tasks", "list", "--type", "t", "--limit", "2"]
        doc = json.loads(kubeq(*args, *(["--cursor", cursor] if cursor else [])).stdout)
        seen += [t["id"] for t in doc["tasks"]]
        assert all(t["status"] == "pending" and t["type"] == "t" for t in doc["tasks"])
        cursor = doc["cursor"]
        if cursor is None:
            break
    assert seen == ids
    text = kubeq("tasks", "list", "--limit", "2").stdout
    assert ids[0] in text
    assert "more: --cursor 1:2" in text


def test_tasks_list_rejects_a_bad_cursor_and_level(kubeq: Kubeq) -> None:
    assert "cursor" in kubeq("tasks", "list", "--cursor", "zz", code=2).stderr
    assert "unknown priority" in kubeq("tasks", "list", "--level", "nope", code=2).stderr


def test_retry_runs_a_scheduled_task_now_and_exits_3_otherwise(
    kubeq: Kubeq, queue_client: Client
) -> None:
    later = queue_client.submit("t", delay=3600)
    now_ = queue_client.submit("t")
    assert "is due now" in kubeq("retry", later).stdout
    assert queue_client.status(later).status == TaskStatus.PENDING
    assert "not scheduled or retrying" in kubeq("retry", now_, code=3).stderr


def test_pause_and_resume_show_in_stats(kubeq: Kubeq, queue_client: Client) -> None:
    queue_client.submit("t")
    assert "paused" in kubeq("pause", "--reason", "db migration").stdout
    assert "already paused" in kubeq("pause").stdout
    assert queue_client.claim("w", 10).tasks == []
    out = kubeq("stats").stdout
    assert "PAUSED" in out
    assert "db migration" in out
    assert json.loads(kubeq("-o", "json", "stats").stdout)["paused"] is True
    assert "resumed" in kubeq("resume").stdout
    assert len(queue_client.claim("w", 10).tasks) == 1
    assert "PAUSED" not in kubeq("stats").stdout


def test_dlq_requeue_and_purge_by_type(kubeq: Kubeq, queue_client: Client, make_dead: Any) -> None:
    a = make_dead(2, task_type="a")
    b = make_dead(1, task_type="b")
    doc = json.loads(kubeq("-o", "json", "dlq", "requeue", "--type", "a").stdout)
    assert sorted(doc["requeued"]) == sorted(a)
    assert "requeued 0 task(s)" in kubeq("dlq", "requeue", "--reason", "nope").stdout
    assert "one of them" in kubeq("dlq", "purge", "--all", "--type", "b", "--yes", code=2).stderr
    assert (
        "purged 1 task(s)"
        in kubeq("dlq", "purge", "--type", "b", "--reason", "permanent_error", "--yes").stdout
    )
    assert queue_client.stats().dead == 0
    assert queue_client.status(a[0]).status == TaskStatus.PENDING
    del b


def test_stats_shows_per_type_counters(kubeq: Kubeq, queue_client: Client) -> None:
    queue_client.submit_many([{"type": "ingest"}] * 3 + [{"type": "report"}])
    out = kubeq("stats").stdout
    assert "per task type" in out
    assert "ingest" in out
    doc = json.loads(kubeq("-o", "json", "stats").stdout)
    assert doc["types"] == {"ingest": {"submitted": 3}, "report": {"submitted": 1}}
