"""Issue 13 on a real server: listing tasks by state, run-now, pause/resume, filtered DLQ."""

from __future__ import annotations

import random
from typing import Any

import pytest

import redis
from kubeq.protocol import Client, ConfigError, TaskError, TaskStatus, UnknownPriority
from kubeq.protocol.browse import MAX_WINDOWS


def _all(client: Client, state: str, **kw: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = client.list_tasks(state, cursor=cursor, **kw)
        ids += [t.id for t in page.tasks]
        cursor = page.cursor
        if cursor is None:
            return ids


def _dead(client: Client, tid_type: str, reason: str) -> str:
    """Submit a task of `tid_type` and dead-letter it with `reason`."""
    tid = client.submit(tid_type)
    (c,) = client.claim("w", 1).tasks
    err = TaskError(type="E", message="boom", traceback="Traceback ...")
    s = client.ops.failure(c, err, client.clock(), random.Random(1), permanent=True, reason=reason)
    assert client.settle([s]) == [True]
    return tid


def test_every_state_lists_exactly_the_tasks_status_reports_in_it(client: Client) -> None:
    # One task at a time through each ending, then the waiting ones.
    done_id = client.submit("d", priority="high")
    (dc,) = client.claim("w", 1).tasks
    client.settle([client.ops.completion(dc, {"ok": 1}, client.clock())])
    dead_id = _dead(client, "x", "permanent")
    retry_id = client.submit("r")
    (rc,) = client.claim("w", 1).tasks
    err = TaskError(type="E", message="later")
    client.settle([client.ops.failure(rc, err, client.clock(), random.Random(1), delay=30)])
    running_id = client.submit("a", priority="low")
    assert [c.id for c in client.claim("w", 1).tasks] == [running_id]
    pending = client.submit_many([{"type": "a"}, {"type": "b", "priority": "high"}])
    scheduled = client.submit("a", delay=60)
    assert (dc.id, rc.id) == (done_id, retry_id)

    expected = {
        "pending": set(pending),
        "scheduled": {scheduled},
        "running": {running_id},
        "retrying": {retry_id},
        "completed": {done_id},
        "dead": {dead_id},
    }
    for state, ids in expected.items():
        page = client.list_tasks(state)
        assert {t.id for t in page.tasks} == ids, state
        assert page.cursor is None
        for t in page.tasks:
            assert t.status == TaskStatus(state)
            # The listing reads a task exactly as status() does.
            assert t.model_dump(exclude={"cancel_requested"}) == client.status(t.id).model_dump(
                exclude={"cancel_requested"}
            )
    assert [t.id for t in client.list_tasks("pending", task_type="b").tasks] == [pending[1]]
    assert [t.id for t in client.list_tasks("pending", level="high").tasks] == [pending[1]]
    assert client.list_tasks("completed", level="low").tasks == []


def test_paging_returns_every_task_once_in_order_with_small_pages(client: Client) -> None:
    ids = client.submit_many([{"type": "t", "priority": lv} for lv in ("high", "low") * 30])
    got = _all(client, "pending", limit=7)
    high = [t for i, t in enumerate(ids) if i % 2 == 0]
    low = [t for i, t in enumerate(ids) if i % 2 == 1]
    assert got == high + low


def test_a_page_reads_a_bounded_window_and_hands_back_a_cursor(client: Client) -> None:
    """A filter matching nothing in a long list still ends the call after MAX_WINDOWS
    windows: the work of one call is bounded whatever the data."""
    client.submit_many([{"type": "common"}] * 1500)
    client.submit("rare")
    page = client.list_tasks("pending", task_type="rare", limit=1)
    assert page.scanned <= MAX_WINDOWS * 1000
    assert [t.type for t in page.tasks] == ["rare"]
    assert _all(client, "pending", task_type="nope", limit=1) == []


def test_listing_uses_no_keyspace_scans(client: Client, redis_url: str) -> None:
    client.submit_many([{"type": "t"}] * 5)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.config_resetstat()
    for state in ("pending", "scheduled", "running", "retrying", "completed", "dead"):
        client.list_tasks(state)
    used = set(r.info("commandstats"))
    r.close()
    assert "cmdstat_lrange" in used
    assert not {"cmdstat_keys", "cmdstat_scan"} & used


def test_bad_listing_arguments_are_clear_errors(client: Client) -> None:
    with pytest.raises(ConfigError, match="unknown state"):
        client.list_tasks("exploded")
    with pytest.raises(ConfigError, match="cursor"):
        client.list_tasks("pending", cursor="x:y")
    with pytest.raises(ConfigError, match="limit"):
        client.list_tasks("pending", limit=0)
    with pytest.raises(ConfigError, match="task type"):
        client.list_tasks("pending", task_type="<script>")
    with pytest.raises(UnknownPriority):
        client.list_tasks("pending", level="urgent")


def test_run_now_moves_a_scheduled_task_to_ready_and_refuses_others(client: Client) -> None:
    later = client.submit("t", delay=3600)
    now_ = client.submit("t")
    assert client.claim("w", 5).tasks[0].id == now_
    assert client.run_now(later) is True
    assert client.status(later).status == TaskStatus.PENDING
    assert [c.id for c in client.claim("w", 5).tasks] == [later]
    assert client.run_now(later) is False  # running now
    assert client.run_now("no-such-task") is False
    assert client.stats().counters["run_now"] == 1


def test_pause_stops_claims_running_tasks_finish_and_resume_restarts(client: Client) -> None:
    a, b = client.submit_many([{"type": "t"}] * 2)
    (ca,) = client.claim("w", 1).tasks
    assert client.pause("deploy") is True
    assert client.pause() is False
    stats = client.stats()
    assert (stats.paused, stats.paused_reason) == (True, "deploy")
    assert stats.paused_at == client.clock()
    assert client.claim("w", 5).tasks == []
    assert client.settle([client.ops.completion(ca, 1, client.clock())]) == [True]
    assert client.submit("t")  # producers may still submit while paused
    assert client.resume() is True
    assert client.resume() is False
    assert client.stats().paused is False
    assert b in {c.id for c in client.claim("w", 5).tasks}
    assert client.status(a).status == TaskStatus.COMPLETED


def test_pause_reason_is_checked(client: Client) -> None:
    with pytest.raises(ConfigError, match="control"):
        client.pause("bad\nreason")
    assert client.stats().paused is False


def test_dead_letters_are_requeued_and_purged_by_reason_and_type(client: Client) -> None:
    a = _dead(client, "a", "permanent")
    b = _dead(client, "b", "permanent")
    c = _dead(client, "a", "lease_expired")
    assert client.requeue_dead_where(reason="permanent", task_type="a") == [a]
    assert {t.id for t in client.list_tasks("dead").tasks} == {b, c}
    assert client.purge_dead_where(reason="lease_expired") == [c]
    assert [t.id for t in client.list_tasks("dead").tasks] == [b]
    assert client.status(a).status == TaskStatus.PENDING


def test_filtered_requeue_walks_past_many_non_matching_dead_letters(client: Client) -> None:
    ids = client.submit_many([{"type": "keep"}] * 1200 + [{"type": "go"}] * 3)
    claimed = []
    while batch := client.claim("w", 1000).tasks:
        claimed += batch
    assert len(claimed) == len(ids)
    err = TaskError(type="E", message="x")
    now = client.clock()
    rng = random.Random(1)
    client.settle([client.ops.failure(c, err, now, rng, permanent=True) for c in claimed])
    assert sorted(client.requeue_dead_where(task_type="go")) == sorted(ids[-3:])
    assert client.stats().dead == 1200


def test_scale_log_is_capped_and_newest_first(client: Client) -> None:
    for i in range(105):
        client.record_scale({"at": i, "from": 1, "to": 2, "reason": f"r{i}"})
    log = client.scale_log(500)
    assert len(log) == 100
    assert log[0]["reason"] == "r104"


def test_submit_counts_each_new_task_once_per_type(client: Client) -> None:
    client.submit_many([{"type": "a"}, {"type": "b"}, {"type": "a"}])
    client.submit("a", idempotency_key="k")
    client.submit("a", idempotency_key="k")  # the same task again: not counted
    assert client.type_stats() == {"a": {"submitted": 3}, "b": {"submitted": 1}}
    # One type per chunk (sent without per-task type indexes), plain and with checks.
    client.submit_many([{"type": "c"}] * 4)
    repeated = {"type": "d", "idempotency_key": "x"}
    client.submit_many([repeated, repeated, {"type": "d", "id": "chosen-1"}, {"type": "d"}])
    stats = client.type_stats()
    assert stats["c"] == {"submitted": 4}
    assert stats["d"] == {"submitted": 3}  # the repeated key is one task


def test_per_type_counters_are_bounded(client: Client) -> None:
    """A producer inventing types cannot grow the hash past its cap: the rest count as
    "(other)"."""
    from kubeq.protocol import browse

    client.run(browse.tally(client.ops, {(f"t{i}", "completed"): 1 for i in range(1200)}))
    types = client.type_stats()
    assert len(types) == 1001
    assert types["(other)"] == {"completed": 200}
    assert client.redis.hlen(client.keys.type_counters) == 1001


def test_lease_holders_counts_each_workers_leases_from_the_fencing_state(client: Client) -> None:
    big = "x" * 200_000  # payloads are never read: only "token|worker|started" per lease
    client.submit_many([{"type": "t", "payload": big}] * 3 + [{"type": "t"}] * 2500)
    assert client.lease_holders() == {}
    a = client.claim("worker-a", 2)
    client.claim("worker-b", 2501)  # more than one scan page
    assert client.lease_holders() == {"worker-a": 2, "worker-b": 2501}
    assert client.lease_holders(limit=2503) == {"worker-a": 2, "worker-b": 2501}
    assert client.lease_holders(limit=2502) is None  # a bounded read says it stopped
    client.settle([client.ops.completion(t, None, client.clock()) for t in a.tasks])
    assert client.lease_holders() == {"worker-b": 2501}  # ended leases are gone
    client.submit("t")
    client.claim("pod|7|x", 1)  # a worker id with the separator in it comes back whole
    assert client.lease_holders() == {"worker-b": 2501, "pod|7|x": 1}


@pytest.mark.parametrize("limit", [0, -1, 1.5, "10", True])
def test_lease_holders_limit_must_be_a_positive_integer(client: Client, limit: object) -> None:
    with pytest.raises(ConfigError, match="limit"):
        client.lease_holders(limit)  # type: ignore[arg-type]
