"""claim, heartbeat and settle: leases, fencing tokens and priorities on a real server."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Callable

from tests.conftest import FakeClock

from kubeq.protocol import Client, QueueConfig, TaskError, TaskStatus, WorkerInfo


def held(claim_tasks):  # type: ignore[no-untyped-def]
    return [(c.id, c.token, c.level_index) for c in claim_tasks]


def test_claim_takes_a_batch_with_a_lease_and_a_fresh_token_each(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    client.submit_many([{"type": "t", "payload": i} for i in range(5)])
    claim = client.claim("w1", 3)
    assert len(claim.tasks) == 3
    assert len({c.token for c in claim.tasks}) == 3
    for c in claim.tasks:
        assert c.task.status == TaskStatus.RUNNING
        assert c.task.attempts == 1
        status = client.status(c.id)
        assert (status.status, status.worker, status.token) == ("running", "w1", c.token)
    stats = client.stats()
    assert (stats.ready, stats.in_flight) == (2, 3)


def test_many_concurrent_claimers_get_each_task_exactly_once(
    redis_url: str, make_client: Callable[..., Client]
) -> None:
    producer = make_client()
    ids = producer.submit_many([{"type": "t", "payload": i} for i in range(3000)])
    seen: list[str] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        c = Client.from_url(redis_url, producer.config.name, config=producer.config)
        while True:
            claim = c.claim(f"w{n}", random.randint(1, 50))
            if not claim.tasks:
                break
            with lock:
                seen.extend(t.id for t in claim.tasks)
        c.close()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert Counter(seen) == Counter(ids)  # every task once: none lost, none duplicated


def test_strict_priorities_drain_higher_levels_first(client: Client) -> None:
    client.submit_many([{"type": "t", "priority": p} for p in ["low", "default", "high"] * 3])
    order = [c.task.priority for c in client.claim("w", 9).tasks]
    assert order == ["high"] * 3 + ["default"] * 3 + ["low"] * 3


def test_weighted_priorities_serve_low_levels_under_sustained_high_load(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(
        mode="weighted", priorities=[{"name": "high", "weight": 9}, {"name": "low", "weight": 1}]
    )
    client.rng = random.Random(11)
    client.submit_many([{"type": "t", "priority": "low"}] * 200)
    served = Counter()
    for _ in range(300):
        # Sustained high load: the high level never runs dry.
        client.submit_many([{"type": "t", "priority": "high"}] * 2)
        for c in client.claim("w", 1).tasks:
            served[c.task.priority] += 1
    assert served["low"] > 10  # about 1 in 10 claims: not starved
    assert served["high"] > served["low"] * 4


def test_complete_stores_the_result_and_frees_the_lease(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    tid = client.submit("t", {"x": 1})
    (c,) = client.claim("w", 1).tasks
    clock.advance(2)
    assert client.settle([client.ops.completion(c, {"sum": 3}, clock.now)]) == [True]
    task = client.status(tid)
    assert task.status == TaskStatus.COMPLETED
    assert (task.result, task.finished_at, task.attempts) == ({"sum": 3}, clock.now, 1)
    assert client.result(tid, timeout=1) == {"sum": 3}
    stats = client.stats()
    assert (stats.backlog, stats.counters["completed"]) == (0, 1)


def test_a_stale_token_is_refused_after_the_task_was_reclaimed(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    tid = client.submit("t")
    (first,) = client.claim("slow", 1, lease_ms=1000).tasks
    clock.advance(2)
    client.reap()
    (second,) = client.claim("fast", 1).tasks
    assert second.id == tid
    assert second.token > first.token
    assert second.task.attempts == 2
    # The slow worker wakes up and tries every way of ending the task: all refused.
    now = clock.now
    stale = [
        client.ops.completion(first, "late", now),
        client.ops.failure(first, TaskError(type="E", message="x"), now, random.Random()),
        client.ops.release(first),
    ]
    for s in stale:
        assert client.settle([s]) == [False]
    hb = client.heartbeat("slow", held([first]), WorkerInfo(id="slow"))
    assert hb.lost == [tid]
    assert client.settle([client.ops.completion(second, "right", now)]) == [True]
    assert client.result(tid, timeout=1) == "right"
    assert client.stats().counters["completed"] == 1  # completed once


def test_mixed_batch_settles_each_task_by_its_own_token(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    client.submit_many([{"type": "t"}] * 3)
    a, b, c = client.claim("w", 3).tasks
    forged = type(b)(task=b.task, token=b.token + 1000, level_index=b.level_index)
    result = client.settle(
        [
            client.ops.completion(a, 1, clock.now),
            client.ops.completion(forged, 2, clock.now),
            client.ops.release(c),
        ]
    )
    assert result == [True, False, True]
    assert client.status(b.id).status == TaskStatus.RUNNING


def test_heartbeat_extends_all_leases_so_the_reaper_leaves_them(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    client.submit_many([{"type": "t"}] * 3)
    tasks = client.claim("w", 3, lease_ms=10_000).tasks
    for _ in range(5):
        clock.advance(8)
        reply = client.heartbeat("w", held(tasks), WorkerInfo(id="w", in_flight=3), lease_ms=10_000)
        assert reply.lost == []
        assert reply.cancelled == []
        assert client.reap().requeued == []
    assert [w.in_flight for w in client.workers()] == [3]
    clock.advance(11)
    assert sorted(client.reap().requeued) == sorted(t.id for t in tasks)


def test_retry_waits_out_its_backoff_then_runs_again(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    tid = client.submit("t")
    (c,) = client.claim("w", 1).tasks
    s = client.ops.failure(
        c, TaskError(type="Boom", message="try again"), clock.now, random.Random(5)
    )
    assert s.action == "retry"
    assert client.settle([s]) == [True]
    assert client.status(tid).status == TaskStatus.RETRYING
    clock.now = s.due_ms - 1
    assert client.claim("w", 1).tasks == []
    clock.now = s.due_ms
    (again,) = client.claim("w", 1).tasks
    assert (again.id, again.task.attempts) == (tid, 2)


def test_exhausted_or_permanent_failures_go_to_dead_letter_with_the_error(
    make_client: Callable[..., Client],
    clock,  # type: ignore[no-untyped-def]
) -> None:
    client = make_client(max_attempts=2)
    tid = client.submit("t")
    for attempt in (1, 2):
        clock.advance(3600)
        (c,) = client.claim("w", 1).tasks
        assert c.task.attempts == attempt
        client.settle(
            [
                client.ops.failure(
                    c,
                    TaskError(type="E", message=f"n{attempt}", traceback="tb"),
                    clock.now,
                    random.Random(),
                )
            ]
        )
    task = client.status(tid)
    assert task.status == TaskStatus.DEAD
    assert task.error is not None
    assert (task.error.message, task.error.traceback) == ("n2", "tb")
    assert task.reason == "attempts_exhausted"
    perm = client.submit("t")
    (c,) = client.claim("w", 1).tasks
    client.settle(
        [
            client.ops.failure(
                c, TaskError(type="V", message="bad"), clock.now, random.Random(), permanent=True
            )
        ]
    )
    assert client.status(perm).reason == "permanent_error"
    assert client.stats().dead == 2


def test_release_returns_the_task_to_the_front_without_using_an_attempt(
    client: Client,
) -> None:
    first, _second = client.submit_many([{"type": "t"}] * 2)
    (c,) = client.claim("w", 1).tasks
    assert client.settle([client.ops.release(c)]) == [True]
    (again,) = client.claim("w", 1).tasks
    assert (again.id, again.task.attempts) == (first, 1)


def test_claim_reports_malformed_records_and_they_can_be_dead_lettered(
    client: Client,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    r = client.redis
    r.hset(client.keys.tasks, "bad1", "{not json")
    r.hset(client.keys.tasks, "bad2", json.dumps({"id": "bad2", "type": 5}))
    r.rpush(client.keys.ready("default"), "bad1", "bad2")
    good = client.submit("t")
    claim = client.claim("w", 10)
    assert [c.id for c in claim.tasks] == [good]
    assert sorted(m.task_id for m in claim.malformed) == ["bad1", "bad2"]
    settle = [client.ops.dead_letter_malformed(m, "w", clock.now) for m in claim.malformed]
    assert client.settle(settle) == [True, True]
    dead = {d.task.id: d.task for d in client.dead_letters()}
    assert dead["bad1"].reason == "malformed_record"


def test_rate_limit_is_one_token_bucket_for_all_claimers(
    make_client: Callable[..., Client],
    clock,  # type: ignore[no-untyped-def]
) -> None:
    client = make_client(rate_limit={"per_second": 10, "burst": 5})
    other = Client(client.redis, client.config, clock=clock)
    client.submit_many([{"type": "t"}] * 100)
    assert len(client.claim("a", 100).tasks) == 5  # the burst
    blocked = other.claim("b", 100)
    assert blocked.tasks == []
    assert blocked.rate_wait_ms == 100
    clock.advance(1)  # 10 tokens accrue, capped at the burst of 5
    assert len(other.claim("b", 100).tasks) == 5
    clock.advance(0.3)
    assert len(client.claim("a", 100).tasks) == 3


def test_config_published_to_redis_is_what_a_bare_client_uses(redis_url: str) -> None:
    cfg = QueueConfig(name="pub", priorities=[{"name": "p1"}, {"name": "p2"}], max_attempts=7)
    with Client.from_url(redis_url, "pub", config=cfg) as publisher:
        publisher.publish_config()
    with Client.from_url(redis_url, "pub") as bare:
        assert bare.config == cfg


def test_a_due_task_on_a_level_past_the_first_64_is_promoted_and_claimed(
    make_client: Callable[..., Client], clock: FakeClock
) -> None:
    """claim.lua checks the delayed sets 64 levels per EXISTS before any range query: a
    due task on level 70 of 70 (the second group) must still be promoted."""
    levels = [{"name": f"p{i}", "weight": 1} for i in range(70)]
    client = make_client(priorities=levels, mode="strict")
    tid = client.submit("t", 1, priority="p69", delay=5)
    assert client.claim("w", 5).tasks == []  # not due yet
    clock.advance(6)
    got = client.claim("w", 5).tasks
    assert [c.id for c in got] == [tid]
