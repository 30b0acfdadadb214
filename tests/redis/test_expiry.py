"""Issue 9 item 8: expiry keeps pace with completion by construction, and one reap()
returns every expired lease, not a fixed slice per round."""

from __future__ import annotations

from collections.abc import Callable
from random import Random

from tests.conftest import FakeClock

from kubeq.protocol import Client, TaskError


def _complete(client: Client, n: int, batch: int = 100) -> None:
    client.submit_many([{"type": "t"}] * n)
    while claimed := client.claim("w", batch).tasks:
        client.settle([client.ops.completion(c, "r", 0) for c in claimed])


def test_settling_prunes_expired_results_without_any_reaper(
    make_client: Callable[..., Client], clock: FakeClock
) -> None:
    client = make_client(result_ttl_seconds=10)
    _complete(client, 3_000)
    assert client.redis.hlen(client.keys.results) == 3_000
    for _ in range(5):  # a steady stream: every round's results expire before the next
        clock.advance(11)
        _complete(client, 3_000)
        assert client.redis.hlen(client.keys.results) == 3_000
        assert client.redis.zcard(client.keys.results_expiry) == 3_000
    assert client.stats().counters["completed"] == 18_000


def test_dead_letters_past_retention_are_pruned_by_new_dead_letters(
    make_client: Callable[..., Client], clock: FakeClock
) -> None:
    client = make_client(dead_letter_retention_seconds=10, max_attempts=1)
    err = TaskError(type="E", message="boom")

    def fail(n: int) -> list[str]:
        ids = client.submit_many([{"type": "t"}] * n)
        claimed = client.claim("w", n).tasks
        client.settle([client.ops.failure(c, err, 0, Random()) for c in claimed])
        return ids

    old = fail(500)
    clock.advance(11)
    new = fail(500)
    assert client.stats().dead == 500
    assert sorted(d.task.id for d in client.dead_letters(limit=1000)) == sorted(new)
    assert client.redis.hmget(client.keys.tasks, old) == [None] * 500  # nothing left behind
    assert client.redis.hlen(client.keys.meta) == 500


def test_one_reap_returns_every_expired_lease_and_result(
    make_client: Callable[..., Client], clock: FakeClock
) -> None:
    client = make_client(lease_seconds=10, heartbeat_seconds=1, result_ttl_seconds=5)
    client.redis.zadd(client.keys.results_expiry, {f"old{i}": 1 for i in range(2_500)})
    client.redis.hset(client.keys.results, mapping={f"old{i}": "{}" for i in range(2_500)})
    client.submit_many([{"type": "t", "priority": p} for p in ("high", "low") * 1_500])
    assert len(client.claim("w", 3_000).tasks) == 3_000
    clock.advance(11)
    report = client.reap()
    assert len(report.requeued) == 3_000
    assert report.results_expired == 2_500
    assert client.redis.hlen(client.keys.results) == 0


def test_dead_letters_from_expired_leases_prune_old_ones_too(
    make_client: Callable[..., Client], clock: FakeClock
) -> None:
    client = make_client(
        dead_letter_retention_seconds=10, max_attempts=1, lease_seconds=5, heartbeat_seconds=1
    )

    def lose(n: int) -> list[str]:
        ids = client.submit_many([{"type": "t"}] * n)
        client.claim("w", n)
        clock.advance(6)
        assert sorted(client.reap().dead) == sorted(ids)
        return ids

    lose(300)
    clock.advance(11)
    new = lose(300)
    assert sorted(d.task.id for d in client.dead_letters(limit=1000)) == sorted(new)
