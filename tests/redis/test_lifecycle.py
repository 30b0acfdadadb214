"""Reaping, cancellation, status, results, dead-letter admin and stats on a real server."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from kubeq.protocol import (
    Client,
    ResultTimeout,
    TaskError,
    TaskFailed,
    TaskNotFound,
    TaskStatus,
    WorkerInfo,
)


def test_expired_leases_are_reaped_back_to_the_front_with_the_attempt_counted(
    client: Client,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    a, _b = client.submit_many([{"type": "t"}] * 2)
    (_ca,) = client.claim("dead-worker", 1).tasks
    clock.advance(client.config.lease_seconds - 1)
    assert client.reap().requeued == []
    clock.advance(1)
    report = client.reap()
    assert report.requeued == [a]
    assert client.status(a).status == TaskStatus.PENDING
    (again,) = client.claim("w2", 1).tasks
    assert (again.id, again.task.attempts) == (a, 2)
    assert client.stats().counters["reaped"] == 1


def test_a_task_whose_workers_keep_dying_ends_in_dead_letter(
    make_client: Callable[..., Client],
    clock,  # type: ignore[no-untyped-def]
) -> None:
    client = make_client(max_attempts=3)
    tid = client.submit("poison")
    for _ in range(3):
        assert [c.id for c in client.claim("w", 1).tasks] == [tid]
        clock.advance(client.config.lease_seconds + 1)
        report = client.reap()
    assert report.dead == [tid]
    task = client.status(tid)
    assert (task.status, task.reason, task.attempts) == (TaskStatus.DEAD, "lease_expired", 3)
    assert task.error is not None
    assert "lease expired on attempt 3 of 3" in task.error.message


def test_concurrent_reapers_requeue_each_expired_task_once(
    redis_url: str,
    client: Client,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    ids = client.submit_many([{"type": "t"}] * 500)
    while client.claim("gone", 100).tasks:
        pass
    clock.advance(client.config.lease_seconds + 1)
    results: list[list[str]] = []

    def reaper() -> None:
        c = Client.from_url(redis_url, client.config.name, config=client.config, clock=clock)
        results.append(c.reap(limit=100).requeued)
        results.append(c.reap(limit=1000).requeued)
        c.close()

    threads = [threading.Thread(target=reaper) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    requeued = [i for r in results for i in r]
    assert sorted(requeued) == sorted(ids)
    assert client.stats().ready == 500


def test_cancel_pending_removes_it_and_running_is_flagged_for_the_heartbeat(
    client: Client,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    run, wait, later = client.submit_many(
        [{"type": "t"}, {"type": "t"}, {"type": "t", "delay": 60}]
    )
    (c,) = client.claim("w", 1).tasks
    assert client.cancel(wait) == "cancelled"
    assert client.cancel(later) == "cancelled"
    assert client.status(wait).status == TaskStatus.CANCELLED
    assert client.stats().backlog == 1  # only the running one
    assert client.cancel(run) == "requested"
    assert client.status(run).cancel_requested
    reply = client.heartbeat("w", [(c.id, c.token, c.level_index)], WorkerInfo(id="w"))
    assert reply.cancelled == [run]
    client.settle(
        [
            client.ops.completion(
                c, None, clock.now, status="cancelled", reason="cancelled while running"
            )
        ]
    )
    assert client.status(run).status == TaskStatus.CANCELLED
    with pytest.raises(TaskFailed, match="cancelled"):
        client.result(run, timeout=1)
    assert client.cancel(run) == "finished"
    assert client.cancel("nope") == "unknown"


def test_a_cancelled_task_whose_worker_died_is_not_run_again(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    tid = client.submit("t")
    client.claim("w", 1)
    client.cancel(tid)
    clock.advance(client.config.lease_seconds + 1)
    assert client.reap().cancelled == [tid]
    assert client.status(tid).status == TaskStatus.CANCELLED
    assert client.claim("w", 1).tasks == []


def test_results_expire_after_their_ttl(make_client: Callable[..., Client], clock) -> None:  # type: ignore[no-untyped-def]
    client = make_client(result_ttl_seconds=60)
    tid = client.submit("t")
    (c,) = client.claim("w", 1).tasks
    client.settle([client.ops.completion(c, 42, clock.now)])
    clock.advance(59)
    assert client.result(tid) == 42
    clock.advance(1)
    with pytest.raises(TaskNotFound):
        client.status(tid)
    assert client.reap().results_expired == 1
    assert client.redis.hlen(client.keys.results) == 0


def test_result_waits_without_polling_until_the_task_completes(
    redis_url: str,
    client: Client,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    tid = client.submit("t")
    (c,) = client.claim("w", 1).tasks
    finisher = threading.Timer(
        0.3, lambda: client.settle([client.ops.completion(c, "done", clock.now)])
    )
    waiter = Client.from_url(redis_url, client.config.name, config=client.config, clock=clock)
    trips = count_round_trips(waiter)
    finisher.start()
    assert waiter.result(tid, timeout=10) == "done"
    finisher.join()
    # One status before the wait, one after the wake-up: no polling loop.
    assert trips == [1, 1]
    with pytest.raises(ResultTimeout):
        waiter.result(client.submit("t"), timeout=0.2)
    waiter.close()


def count_round_trips(client: Client) -> list[int]:
    """Record each request the client sends (a script call, command or pipeline)."""
    trips: list[int] = []
    execute = client._execute

    def counted(req):  # type: ignore[no-untyped-def]
        trips.append(1)
        return execute(req)

    client._execute = counted  # type: ignore[method-assign]
    return trips


def test_status_of_an_unknown_task_is_a_clear_error(client: Client) -> None:
    with pytest.raises(TaskNotFound, match="no task abc"):
        client.status("abc")


def test_dead_letters_can_be_listed_requeued_and_purged(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    ids = client.submit_many([{"type": "t", "payload": i} for i in range(4)])
    for c in client.claim("w", 4).tasks:
        client.settle(
            [
                client.ops.failure(
                    c, TaskError(type="E", message="no"), clock.now, random.Random(), permanent=True
                )
            ]
        )
    listed = client.dead_letters()
    assert sorted(d.task.id for d in listed) == sorted(ids)
    assert all(d.task.error is not None and d.task.error.type == "E" for d in listed)
    assert client.requeue_dead([ids[0], "not-dead"]) == [ids[0]]
    (c,) = client.claim("w", 1).tasks
    assert (c.id, c.task.attempts) == (ids[0], 1)  # fresh attempts
    assert client.purge_dead([ids[1]]) == 1
    with pytest.raises(TaskNotFound):
        client.status(ids[1])
    assert sorted(client.requeue_dead()) == sorted(ids[2:])
    assert client.stats().dead == 0


def test_dead_letters_older_than_the_retention_are_dropped(
    make_client: Callable[..., Client],
    clock,  # type: ignore[no-untyped-def]
) -> None:
    client = make_client(dead_letter_retention_seconds=3600)
    tid = client.submit("t")
    (c,) = client.claim("w", 1).tasks
    client.settle(
        [
            client.ops.failure(
                c, TaskError(type="E", message="x"), clock.now, random.Random(), permanent=True
            )
        ]
    )
    clock.advance(3599)
    assert client.expire_dead_letters() == 0
    clock.advance(2)
    assert client.expire_dead_letters() == 1
    with pytest.raises(TaskNotFound):
        client.status(tid)


def test_stats_report_backlog_per_level_in_one_round_trip(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    client.submit_many([{"type": "t", "priority": "high"}] * 3)
    client.submit_many([{"type": "t", "priority": "low", "delay": 10}] * 2)
    client.submit("t", priority="low", delay=100)
    clock.advance(5)
    client.claim("w", 1)
    clock.advance(6)
    trips = count_round_trips(client)
    stats = client.stats()
    assert trips == [1]
    high, default, low = stats.levels
    assert (high.ready, high.in_flight, high.due, high.delayed) == (2, 1, 0, 0)
    assert (low.ready, low.due, low.delayed) == (0, 2, 1)
    assert (default.ready, default.backlog) == (0, 0)
    assert stats.backlog == 2 + 1 + 2  # ready + in-flight + due: what the autoscaler sees
    assert stats.oldest_age_seconds() == 11.0


def test_maintenance_lock_admits_one_holder_until_it_expires(client: Client) -> None:
    assert client.acquire_maintenance("a", 5000)
    assert not client.acquire_maintenance("b", 5000)


def test_finished_lists_completed_and_cancelled_tasks_page_by_page(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    ids = client.submit_many([{"type": "t", "payload": i} for i in range(25)])
    claimed = client.claim("w", 20).tasks
    client.settle([client.ops.completion(c, c.task.payload * 2, clock.now) for c in claimed])
    assert client.cancel(ids[-1]) == "cancelled"
    finished = {t.id: t for t in client.finished(page_size=5)}
    assert set(finished) == {c.id for c in claimed} | {ids[-1]}
    assert finished[claimed[3].id].result == claimed[3].task.payload * 2
    assert finished[ids[-1]].status == TaskStatus.CANCELLED
