"""`kubeq dlq list|requeue|purge` on dead letters made through claim + permanent failure."""

from __future__ import annotations

import json
from typing import Any

from kubeq.protocol import Client, TaskNotFound, TaskStatus

Kubeq = Any


def test_dlq_list_text_and_json(kubeq: Kubeq, make_dead: Any) -> None:
    assert "no dead letters at offset 0 (0 in total)" in kubeq("dlq", "list").stdout
    ids = make_dead(3)
    out = kubeq("dlq", "list").stdout
    assert "dead letters 1-3 of 3" in out
    for task_id in ids:
        assert task_id in out
    assert "ValueError: boom" in out
    assert "permanent_error" in out
    docs = json.loads(kubeq("-o", "json", "dlq", "list", "--limit", "2", "--offset", "1").stdout)
    assert len(docs) == 2
    assert {d["id"] for d in docs} <= set(ids)
    assert all(d["status"] == "dead" and d["dead_at"] > 0 for d in docs)
    assert docs[0]["error"]["message"] == "boom"


def test_dlq_requeue_by_id_and_all(kubeq: Kubeq, queue_client: Client, make_dead: Any) -> None:
    ids = make_dead(3)
    assert kubeq("dlq", "requeue", ids[0]).stdout.strip() == "requeued 1 task(s)"
    assert queue_client.status(ids[0]).status == TaskStatus.PENDING
    doc = json.loads(kubeq("-o", "json", "dlq", "requeue", "--all").stdout)
    assert sorted(doc["requeued"]) == sorted(ids[1:])
    assert queue_client.stats().dead == 0
    assert queue_client.stats().ready == 3


def test_dlq_requeue_of_ids_not_dead_exits_3(kubeq: Kubeq, make_dead: Any) -> None:
    (dead,) = make_dead()
    res = kubeq("dlq", "requeue", dead, "nope", code=3)
    assert "requeued 1 task(s)" in res.stdout
    assert res.stderr.startswith("error: 1 of the given tasks are not in the dead-letter set")


def test_dlq_requeue_and_purge_need_ids_or_all(kubeq: Kubeq) -> None:
    assert "IDS or --all" in kubeq("dlq", "requeue", code=2).stderr
    assert "IDS or --all" in kubeq("dlq", "purge", "x", "--all", "--yes", code=2).stderr


def test_dlq_purge_asks_first(kubeq: Kubeq, queue_client: Client, make_dead: Any) -> None:
    ids = make_dead(2)
    res = kubeq("dlq", "purge", ids[0], input="n\n", code=1)
    assert "Purge 1 dead-lettered task(s) of default/default?" in res.stderr
    assert queue_client.stats().dead == 2
    res = kubeq("dlq", "purge", ids[0], input="y\n")
    assert res.stdout.strip() == "purged 1 task(s)"
    assert queue_client.stats().dead == 1
    try:
        queue_client.status(ids[0])
    except TaskNotFound:
        pass
    else:
        raise AssertionError("a purged task must be gone")


def test_dlq_purge_all_with_yes_and_json(
    kubeq: Kubeq, queue_client: Client, make_dead: Any
) -> None:
    make_dead(4)
    doc = json.loads(kubeq("-o", "json", "dlq", "purge", "--all", "--yes").stdout)
    assert doc == {"purged": 4}
    assert queue_client.stats().dead == 0
    res = kubeq("dlq", "purge", "gone", "-y", code=3)
    assert "purged 0 task(s)" in res.stdout
