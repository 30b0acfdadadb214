"""Issue 9 items 5, 7, 11 and fencing: what a settle, a cancel and a lost claim reply do at
the edges."""

from __future__ import annotations

from collections.abc import Callable
from random import Random

import pytest
from tests.conftest import FakeClock

from kubeq.protocol import (
    Client,
    InvalidText,
    ResultNotJSON,
    ResultTooLarge,
    Settlement,
    TaskStatus,
    WorkerInfo,
)
from kubeq.protocol.models import TaskError


def test_a_result_redis_cannot_encode_fails_its_own_task_and_the_batch_settles(
    client: Client,
) -> None:
    client.submit_many([{"type": "t"}] * 3)
    a, bad, c = client.claim("w", 3).tasks
    settlements = []
    for claimed, result in ((a, "fine"), (bad, "lone \ud800 surrogate"), (c, {"k": 1})):
        try:
            settlements.append(client.ops.completion(claimed, result, 0))
        except ResultNotJSON as exc:
            err = TaskError(type=type(exc).__name__, message=str(exc))
            settlements.append(client.ops.failure(claimed, err, 0, Random(), permanent=True))
    assert [s.action for s in settlements] == ["complete", "dead", "complete"]
    assert client.settle(settlements) == [True, True, True]
    assert client.status(a.id).result == "fine"
    assert client.status(c.id).result == {"k": 1}
    dead = client.status(bad.id)
    assert dead.status == TaskStatus.DEAD
    assert dead.error is not None
    assert "surrogates not allowed" in dead.error.message


def test_results_larger_than_max_result_bytes_are_refused(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(max_result_bytes=100)
    client.submit("t")
    (claimed,) = client.claim("w", 1).tasks
    client.ops.completion(claimed, "x" * 98, 0)  # 100 bytes encoded, with its quotes
    with pytest.raises(ResultTooLarge, match="101 bytes"):
        client.ops.completion(claimed, "x" * 99, 0)
    with pytest.raises(ResultTooLarge, match="limit"):
        client.ops.completion(claimed, "é" * 50, 0)  # 100 characters, 102 bytes


def test_submit_many_validates_every_item_before_writing_any_chunk(client: Client) -> None:
    tasks = [{"type": "t", "payload": i} for i in range(2_500)]
    tasks[-1] = {"type": "t", "payload": "lone \udfff"}
    with pytest.raises(InvalidText, match="UTF-8"):
        client.submit_many(tasks)
    assert client.stats().ready == 0


@pytest.mark.parametrize("ending", ["retry", "release"])
def test_a_cancel_of_a_running_task_sticks_when_its_attempt_ends_in_retry_or_release(
    client: Client, ending: str
) -> None:
    task_id = client.submit("t")
    (claimed,) = client.claim("w", 1).tasks
    assert client.cancel(task_id) == "requested"
    s = (
        client.ops.failure(claimed, TaskError(type="E", message="x"), 0, Random())
        if ending == "retry"
        else client.ops.release(claimed)
    )
    assert s.action == ending
    assert client.settle([s]) == [True]
    task = client.status(task_id)
    assert task.status == TaskStatus.CANCELLED
    assert ending in (task.reason or "")
    assert client.claim("w", 1).tasks == []
    stats = client.stats()
    assert stats.counters["cancelled"] == 1
    assert stats.backlog == 0
    assert stats.delayed == 0
    assert client.redis.scard(client.keys.cancelled) == 0  # the flag went with the task


def test_fencing_compares_the_holder_as_well_as_the_token(client: Client) -> None:
    client.submit("t")
    (claimed,) = client.claim("w1", 1).tasks
    held = [(claimed.id, claimed.token, claimed.level_index)]
    # Another worker presenting the same token (e.g. a token repeated after a purge or a
    # failover) is not the holder.
    assert client.heartbeat("w2", held, WorkerInfo(id="w2")).lost == [claimed.id]
    forged = Settlement(claimed.id, claimed.token, claimed.level_index, "complete", "{}", 0, "w2")
    assert client.settle([forged]) == [False]
    assert client.heartbeat("w1", held, WorkerInfo(id="w1")).lost == []
    assert client.settle([client.ops.completion(claimed, 1, 0)]) == [True]


def test_the_same_task_twice_in_one_settle_batch_applies_once(client: Client) -> None:
    client.submit("t")
    (c,) = client.claim("w", 1).tasks
    done = client.ops.completion(c, 1, 0)
    assert client.settle([done, done]) == [True, False]
    assert client.stats().counters["completed"] == 1


def test_a_claim_whose_reply_was_lost_is_recovered_without_charging_an_attempt(
    make_client: Callable[..., Client], clock: FakeClock
) -> None:
    client = make_client(max_attempts=1, lease_seconds=10, heartbeat_seconds=1)
    ids = client.submit_many([{"type": "t", "payload": i} for i in range(5)])
    lost = client.claim("w", 3, claim_id="c-1")  # imagine this reply never arrived
    again = client.claim("w", 3, claim_id="c-1")  # the worker re-sends the same claim
    assert [(c.id, c.token, c.task.attempts) for c in again.tasks] == [
        (c.id, c.token, 1) for c in lost.tasks
    ]
    assert [c.task.payload for c in again.tasks] == [0, 1, 2]
    assert client.stats().in_flight == 3
    assert client.stats().ready == 2
    nxt = client.claim("w", 3, claim_id="c-2")  # a new claim takes new tasks
    assert [c.id for c in nxt.tasks] == ids[3:]
    # With max_attempts 1, every task still runs: none was dead-lettered unstarted.
    assert (
        client.settle([client.ops.completion(c, 1, 0) for c in [*again.tasks, *nxt.tasks]])
        == [True] * 5
    )
    assert client.stats().dead == 0


def test_a_repeated_claim_does_not_return_tasks_whose_lease_moved_on(
    make_client: Callable[..., Client], clock: FakeClock
) -> None:
    client = make_client(lease_seconds=10, heartbeat_seconds=1)
    client.submit_many([{"type": "t"}] * 2)
    first = client.claim("w", 2, claim_id="c-1")
    clock.advance(11)
    client.reap()
    other = client.claim("other", 2)
    assert sorted(c.id for c in other.tasks) == sorted(c.id for c in first.tasks)
    # The key expired with the lease anyway; even when it has not, the holder check holds.
    assert client.claim("w", 2, claim_id="c-1").tasks == []


def test_a_claim_id_recovers_every_chunk_of_a_claim_above_the_script_batch(
    client: Client,
) -> None:
    client.submit_many([{"type": "t"}] * 2_500)
    lost = client.claim("w", 2_500, claim_id="big")
    again = client.claim("w", 2_500, claim_id="big")
    assert [c.token for c in again.tasks] == [c.token for c in lost.tasks]
    assert len(again.tasks) == 2_500
    assert client.stats().ready == 0
