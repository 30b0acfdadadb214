"""submit / submit_many against a real redis-server."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.conftest import FakeClock

from kubeq.protocol import Client, InvalidTask, QueueFull, TaskExists, TaskRequest, TaskStatus


def test_submitted_tasks_wait_in_their_level_in_fifo_order(client: Client) -> None:
    ids = client.submit_many([{"type": "t", "payload": i, "priority": "low"} for i in range(5)])
    hi = client.submit("t", "urgent", priority="high")
    claim = client.claim("w", 10)
    assert [c.id for c in claim.tasks] == [hi, *ids]
    assert [c.task.payload for c in claim.tasks] == ["urgent", 0, 1, 2, 3, 4]


def test_submit_many_splits_into_chunks_and_returns_ids_in_order(client: Client) -> None:
    reqs = [TaskRequest(type="t", payload=i) for i in range(2500)]
    ids = client.submit_many(reqs, chunk_size=1000)
    assert len(ids) == len(set(ids)) == 2500
    assert client.stats().ready == 2500
    assert client.status(ids[1234]).payload == 1234


def test_idempotency_key_returns_the_first_id_and_enqueues_nothing(client: Client) -> None:
    first = client.submit("t", 1, idempotency_key="order-7")
    again = client.submit("t", 2, idempotency_key="order-7")
    in_batch = client.submit_many(
        [{"type": "t", "idempotency_key": "b"}, {"type": "t", "idempotency_key": "b"}]
    )
    assert again == first
    assert in_batch[0] == in_batch[1]
    assert client.stats().ready == 2
    assert client.status(first).payload == 1


def test_idempotency_key_expires_after_its_ttl(make_client: Callable[..., Client]) -> None:
    client = make_client(idempotency_ttl_seconds=1)
    first = client.submit("t", idempotency_key="k")
    import time

    time.sleep(1.1)  # the TTL lives in Redis (PX), which only the wall clock advances
    assert client.submit("t", idempotency_key="k") != first


def test_delay_and_eta_put_tasks_in_the_delayed_set_until_due(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    later = client.submit("t", delay=30)
    eta = client.submit("t", eta_ms=clock.now + 60_000)
    assert client.status(later).status == TaskStatus.SCHEDULED
    assert client.stats().delayed == 2
    assert client.claim("w", 10).tasks == []
    clock.advance(30)
    assert [c.id for c in client.claim("w", 10).tasks] == [later]
    clock.advance(30)
    assert [c.id for c in client.claim("w", 10).tasks] == [eta]


def test_max_backlog_refuses_a_whole_chunk_with_queue_full(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(max_backlog=5)
    client.submit_many([{"type": "t"}] * 3)
    with pytest.raises(QueueFull, match="maxBacklog 5") as info:
        client.submit_many([{"type": "t"}] * 3)
    assert info.value.accepted == []
    assert client.stats().ready == 3  # nothing of the refused chunk was written
    ids = client.submit_many([{"type": "t"}] * 2)
    assert len(ids) == 2
    with pytest.raises(QueueFull):
        client.submit("t")


def test_queue_full_reports_what_earlier_chunks_accepted(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(max_backlog=4)
    with pytest.raises(QueueFull) as info:
        client.submit_many([{"type": "t"}] * 6, chunk_size=3)
    assert len(info.value.accepted) == 3
    assert client.stats().ready == 3


def test_max_attempts_per_task_overrides_the_queue_default(client: Client) -> None:
    tid = client.submit("t", max_attempts=9)
    assert client.status(tid).max_attempts == 9
    assert client.status(client.submit("t")).max_attempts == 5


def test_a_caller_chosen_id_that_exists_anywhere_is_refused(client: Client) -> None:
    client.submit_many([{"type": "t", "id": "order-1", "payload": 1}])
    with pytest.raises(TaskExists, match="order-1"):
        client.submit_many([{"type": "t", "id": "order-1", "payload": 2}])
    assert client.stats().ready == 1
    assert client.status("order-1").payload == 1
    (c,) = client.claim("w", 1).tasks
    with pytest.raises(TaskExists):  # running
        client.submit_many([{"type": "t", "id": "order-1"}])
    client.settle([client.ops.completion(c, "first", 0)])
    with pytest.raises(TaskExists):  # finished: its result must not answer for a new task
        client.submit_many([{"type": "t", "id": "order-1"}])
    assert client.result("order-1", timeout=1) == "first"


def test_the_same_id_twice_in_one_submit_many_is_refused_before_writing(client: Client) -> None:
    tasks = [{"type": "t", "id": f"t{i}"} for i in range(1_500)] + [{"type": "t", "id": "t3"}]
    with pytest.raises(TaskExists, match="t3 appears more than once"):
        client.submit_many(tasks)
    assert client.stats().ready == 0


def test_a_refused_chunk_reports_exactly_what_earlier_chunks_accepted(
    make_client: Callable[..., Client],
) -> None:
    client = make_client()
    client.submit_many([{"type": "t", "id": "taken"}])
    tasks = [{"type": "t", "id": f"t{i}"} for i in range(2_500)]
    tasks[2_100] = {"type": "t", "id": "taken"}
    with pytest.raises(TaskExists) as info:
        client.submit_many(tasks)
    assert info.value.accepted == [f"t{i}" for i in range(2_000)]
    assert info.value.uncertain == []
    assert client.stats().ready == 2_001


def test_max_backlog_counts_a_key_repeated_within_one_chunk_once(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(max_backlog=1)
    ids = client.submit_many([{"type": "t", "idempotency_key": "k"}] * 3)
    assert len(set(ids)) == 1
    assert client.stats().ready == 1


def test_delayed_tasks_due_in_the_same_ms_are_promoted_in_submission_order(
    client: Client, clock: FakeClock
) -> None:
    eta = clock.now + 5_000
    ids = [client.submit("t", i, eta_ms=eta) for i in range(50)]
    ids += client.submit_many([{"type": "t", "eta_ms": eta, "payload": 50 + i} for i in range(50)])
    clock.advance(5)
    claimed = client.claim("w", 100).tasks
    assert [c.id for c in claimed] == ids
    assert [c.task.payload for c in claimed] == list(range(100))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delay", float("inf")),
        ("delay", float("nan")),
        ("delay", -1),
        ("delay", True),
        ("eta_ms", float("inf")),
        ("eta_ms", 1e30),
        ("eta_ms", "soon"),
        ("idempotency_key", 42),
        ("idempotency_key", b"bytes"),
    ],
)
def test_bad_timing_and_key_types_are_invalid_task_errors(
    client: Client, field: str, value: object
) -> None:
    with pytest.raises(InvalidTask, match=field.replace("_", "[ _]")):
        client.submit_many([{"type": "t", field: value}])
    assert client.stats().ready == 0


def test_wake_tokens_are_one_per_ready_task_up_to_the_cap(client: Client) -> None:
    """Idle workers need one token each, at most WAKE_CAP of them: the list never grows
    past the cap, whether tasks come one by one or in a batch (and delayed tasks push none)."""
    from kubeq.protocol.ops import WAKE_CAP

    wake = client.keys.wake
    client.submit("t", 1, delay=60)
    assert client.redis.llen(wake) == 0
    for _ in range(3):
        client.submit("t", 1)
    assert client.redis.llen(wake) == 3
    for _ in range(WAKE_CAP):
        client.submit("t", 1)
    assert client.redis.llen(wake) == WAKE_CAP
    client.redis.delete(wake)
    client.submit_many([{"type": "t"}] * (WAKE_CAP * 3))
    assert client.redis.llen(wake) == WAKE_CAP
    client.submit_many([{"type": "t"}] * 5)
    assert client.redis.llen(wake) == WAKE_CAP
