"""Issue 9 items 2 and 3: no record can break a script, and one unparseable record breaks
only its own task."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.conftest import FakeClock

from kubeq.protocol import (
    MAX_PAYLOAD_DEPTH,
    Client,
    InvalidTask,
    PayloadTooDeep,
    TaskStatus,
)


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("bad", [True, False, 0, 1001, 2.0, "3"])
def test_max_attempts_must_be_a_real_integer_within_the_cap(client: Client, bad: object) -> None:
    with pytest.raises(InvalidTask, match="max_attempts"):
        client.submit("t", max_attempts=bad)  # type: ignore[arg-type]
    assert client.stats().ready == 0


def test_payload_nesting_is_limited_to_the_documented_depth(client: Client) -> None:
    client.submit("t", _nested(MAX_PAYLOAD_DEPTH))  # each list is one level
    with pytest.raises(PayloadTooDeep, match=str(MAX_PAYLOAD_DEPTH)):
        client.submit("t", _nested(MAX_PAYLOAD_DEPTH + 1))
    with pytest.raises(PayloadTooDeep):
        client.submit("t", _nested(100_000))  # would be a RecursionError in json
    assert client.stats().ready == 1


CORRUPT = ["[", "[1, 2]", '{"id": 1, "max_attempts": true}', "x" * 10]


def _corrupt(client: Client, task_id: str, record: str) -> None:
    client.redis.hset(client.keys.tasks, task_id, record)


@pytest.mark.parametrize("record", CORRUPT)
def test_a_damaged_record_never_makes_reap_requeue_cancel_or_stats_fail(
    make_client: Callable[..., Client], clock: FakeClock, record: str
) -> None:
    client = make_client(lease_seconds=10, heartbeat_seconds=1, max_attempts=2)
    victim, *others = client.submit_many([{"type": "t", "payload": i} for i in range(3)])
    _corrupt(client, victim, record)
    stats = client.stats()  # the damaged record heads the ready list
    assert stats.ready == 3
    assert stats.levels[1].oldest_enqueued_at == clock.now

    claim = client.claim("w", 3)
    assert [m.task_id for m in claim.malformed] == [victim]
    assert sorted(c.id for c in claim.tasks) == sorted(others)
    clock.advance(11)
    report = client.reap()  # the worker died: every lease expired
    assert sorted(report.requeued) == sorted([victim, *others])
    assert client.stats().ready == 3

    claim = client.claim("w", 3)
    clock.advance(11)
    assert sorted(client.reap().dead) == sorted([victim, *others])  # attempts exhausted
    assert client.stats().dead == 3
    assert sorted(client.requeue_dead()) == sorted([victim, *others])
    assert client.cancel(victim) == "cancelled"
    assert client.status(victim).status == TaskStatus.CANCELLED
    assert client.stats().ready == 2


def test_each_unparseable_task_is_malformed_alone_and_the_rest_run(client: Client) -> None:
    ids = client.submit_many([{"type": "t", "payload": i} for i in range(6)])
    _corrupt(client, ids[1], "[" * 100_000 + "]" * 100_000)  # RecursionError in json.loads
    _corrupt(client, ids[2], "[1, 2, 3]")  # a JSON array, not an object
    _corrupt(client, ids[3], '{"type": 5, "priority": [], "max_attempts": "x"}')  # wrong types
    _corrupt(client, ids[4], "\x00\xff not json")
    claim = client.claim("w", 6)
    assert [c.id for c in claim.tasks] == [ids[0], ids[5]]
    assert [m.task_id for m in claim.malformed] == ids[1:5]
    assert all(m.error for m in claim.malformed)
    settled = client.settle(
        [client.ops.dead_letter_malformed(m, "w", 0) for m in claim.malformed]
        + [client.ops.completion(c, "ok", 0) for c in claim.tasks]
    )
    assert settled == [True] * 6
    dead = {d.task.id: d.task for d in client.dead_letters()}
    assert sorted(dead) == sorted(ids[1:5])
    assert all(t.reason == "malformed_record" for t in dead.values())
    assert client.status(ids[5]).result == "ok"


def test_a_record_cannot_choose_its_own_lease_fields(client: Client) -> None:
    """The claim parser appends the lease's fields to the record's JSON text: whatever
    the record says of id, attempts, token, status or worker, the lease's values win; a
    record that tries to close the object early or smuggle a string is malformed."""
    ids = client.submit_many([{"type": "t", "payload": i} for i in range(5)])
    forged = (
        '{"id":"other","queue":"default/q","type":"t","priority":"default",'
        '"max_attempts":3,"created_at":1,"due_at":1,"attempts":99,"token":12345,'
        '"status":"completed","worker":"evil","started_at":7}'
    )
    _corrupt(client, ids[0], forged)
    _corrupt(client, ids[1], " \n" + forged + " \t")  # whitespace around the object is fine
    _corrupt(client, ids[2], "{}")  # an empty object: malformed (fields missing), not a crash
    _corrupt(client, ids[3], '{"type":"t","x":"}')  # ends inside a string
    _corrupt(client, ids[4], '{"type":"t"}}')  # closes twice
    claim = client.claim("w", 5)
    assert sorted(m.task_id for m in claim.malformed) == sorted(ids[2:])
    assert [c.id for c in claim.tasks] == ids[:2]
    for c in claim.tasks:
        assert c.task.id == c.id
        assert c.task.attempts == 1
        assert c.task.token == c.token != 12345
        assert c.task.status == TaskStatus.RUNNING
        assert c.task.worker == "w"
        assert c.task.started_at != 7


def test_a_claimed_id_keeps_every_character_it_was_submitted_with(client: Client) -> None:
    """The claim parser quotes hex ids as they are and any other through JSON: ids with
    the punctuation the API allows, and (written into Redis by hand) ids no producer could
    choose, come back exactly, never as broken or altered JSON."""
    chosen = ["a.b:c-d_e", "UPPER.lower", "x" * 128, "0"]
    ids = client.submit_many([{"type": "t", "id": i} for i in chosen])
    assert ids == chosen
    forged = 'q"uo\\te\u00e9'
    record = (
        '{"queue":"default/q","type":"t","priority":"default","max_attempts":3,'
        '"created_at":1,"due_at":1}'
    )
    client.redis.hset(client.keys.tasks, forged, record)
    client.redis.hset(client.keys.meta, forged, "default|3|1")
    client.redis.rpush(client.keys.ready("default"), forged)
    claim = client.claim("w", 10)
    assert claim.malformed == []
    assert sorted(c.id for c in claim.tasks) == sorted([*chosen, forged])
    assert all(c.task.id == c.id for c in claim.tasks)
