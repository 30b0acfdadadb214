from __future__ import annotations

import pytest
from redis.crc import key_slot

from kubeq.protocol import QueueConfig, QueueKeys
from kubeq.protocol.ops import QueueOps


def test_every_key_is_versioned_and_carries_the_queue_hash_tag() -> None:
    keys = QueueKeys("prod", "telemetry")
    all_keys = [*keys.all_static(("a", "b")), keys.idempotency("x")]
    assert all(k.startswith("kubeq:v1:{prod/telemetry}:") for k in all_keys)
    assert len(set(all_keys)) == len(all_keys)


def test_all_keys_of_a_queue_map_to_one_cluster_slot_and_queues_spread() -> None:
    keys = QueueKeys("prod", "telemetry")
    slots = {key_slot(k.encode()) for k in [*keys.all_static(("a", "b")), keys.idempotency("z")]}
    assert len(slots) == 1
    other = {key_slot(QueueKeys("prod", f"q{i}").tasks.encode()) for i in range(50)}
    assert len(other) > 40


@pytest.mark.parametrize("name", ["", "UPPER", "a{b}", "a:b", "-lead", "x" * 64, "sp ace"])
def test_names_that_would_break_the_key_schema_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        QueueKeys("default", name)


def test_ops_pass_every_key_through_keys_in_one_slot() -> None:
    """Each script call's keys share one slot: scripts never build key names themselves."""
    ops = QueueOps(QueueConfig(name="t"))
    calls = [
        ops._submit_chunk([("id1", 1, 0, 0, "k", "high|5|0", "{}", 1)], 0),
        next(ops.claim("w", 10, 0, [0, 1, 2])),
        next(ops.heartbeat("w", [("a", 1, 1)], 0, __import__("kubeq").protocol.WorkerInfo(id="w"))),
        next(ops.settle([ops.release(_claimed())], 0)),
        next(ops.reap(0)),
        next(ops.cancel("a", 0)),
        next(ops.status("a", 0)),
        next(ops.stats(0)),
        next(ops.requeue_dead(["a"])),
        next(ops.purge_dead(["a"])),
    ]
    for call in calls:
        slots = {key_slot(k.encode()) for k in call.keys}
        assert len(slots) == 1, call.script


def _claimed():  # type: ignore[no-untyped-def]
    from kubeq.protocol import ClaimedTask, Task

    task = Task(
        id="a",
        queue="default/t",
        type="x",
        priority="high",
        max_attempts=1,
        created_at=0,
        due_at=0,
        attempts=1,
    )
    return ClaimedTask(task=task, token=1, level_index=1)
