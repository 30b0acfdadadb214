"""The progress script on a real server: fenced by the lease, bounded, readable by status
and by listings, and deleted by every ending (settle of any action, reap) so none leaks."""

from __future__ import annotations

import json
import random
from collections.abc import Generator
from typing import Any

import pytest

from kubeq.protocol import (
    MAX_PROGRESS_BYTES,
    ClaimedTask,
    Client,
    ProgressNotStorable,
    ScriptError,
    TaskError,
    TaskStatus,
)
from kubeq.protocol.ops import ScriptCall, encode_progress


def _one(call: ScriptCall) -> Generator[ScriptCall, Any, Any]:
    return (yield call)


def report(client: Client, c: ClaimedTask, value: Any, worker: str | None = None) -> bool:
    (written,) = client.run(
        client.ops.progress(
            worker or c.task.worker or "", [(c.id, c.token, encode_progress(value))], client.clock()
        )
    )
    return bool(written)


def entries(client: Client) -> int:
    return int(client.redis.hlen(client.keys.progress))


def test_the_holder_writes_progress_that_status_and_listings_read(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    tid = client.submit("t")
    (c,) = client.claim("w1", 1).tasks
    assert client.status(tid).progress is None
    assert report(client, c, {"done": 1, "of": 3})
    assert report(client, c, {"done": 2, "of": 3})  # the latest value replaces the last
    task = client.status(tid)
    assert task.progress is not None
    assert (task.progress.value, task.progress.at) == ({"done": 2, "of": 3}, clock.now)
    (listed,) = client.list_tasks("running").tasks
    assert listed.progress == task.progress


def test_only_the_current_lease_holder_may_write(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    tid = client.submit("t")
    (first,) = client.claim("slow", 1, lease_ms=1000).tasks
    assert not report(client, first, "forged", worker="other")  # not its holder
    clock.advance(2)
    client.reap()
    (second,) = client.claim("fast", 1).tasks
    assert not report(client, first, "stale")  # the old lease's token
    assert report(client, second, "fresh")
    task = client.status(tid)
    assert task.progress is not None
    assert task.progress.value == "fresh"


@pytest.mark.parametrize("ending", ["complete", "retry", "dead", "release"])
def test_every_settle_deletes_the_attempts_progress_and_a_late_write_is_dropped(
    client: Client,
    clock,
    ending: str,  # type: ignore[no-untyped-def]
) -> None:
    tid = client.submit("t")
    (c,) = client.claim("w1", 1).tasks
    assert report(client, c, 0.5)
    err = TaskError(type="E", message="m")
    s = {
        "complete": lambda: client.ops.completion(c, "ok", clock.now),
        "retry": lambda: client.ops.failure(c, err, clock.now, random.Random(1)),
        "dead": lambda: client.ops.failure(c, err, clock.now, random.Random(1), permanent=True),
        "release": lambda: client.ops.release(c),
    }[ending]()
    assert client.settle([s]) == [True]
    assert entries(client) == 0
    assert not report(client, c, 0.9)  # a flush that arrives after the settle
    assert entries(client) == 0
    assert client.status(tid).progress is None


def test_reap_deletes_the_progress_of_an_expired_lease(client: Client, clock) -> None:  # type: ignore[no-untyped-def]
    client.submit("t", max_attempts=1)
    client.submit("t", max_attempts=2)
    claimed = client.claim("w1", 2, lease_ms=1000).tasks
    for c in claimed:
        assert report(client, c, "half")
    clock.advance(2)
    report_ = client.reap()
    assert len(report_.requeued) == 1
    assert len(report_.dead) == 1
    assert entries(client) == 0
    for c in claimed:
        assert client.status(c.id).progress is None


def test_values_are_bounded_and_checked_before_redis(client: Client) -> None:
    assert len(encode_progress("x" * (MAX_PROGRESS_BYTES - 2))) == MAX_PROGRESS_BYTES
    with pytest.raises(ProgressNotStorable, match="limit is"):
        encode_progress("x" * (MAX_PROGRESS_BYTES - 1))
    with pytest.raises(ProgressNotStorable, match="not JSON"):
        encode_progress({1, 2})
    with pytest.raises(ProgressNotStorable, match="not JSON"):
        encode_progress(float("nan"))
    client.submit("t")
    (c,) = client.claim("w1", 1).tasks
    with pytest.raises(ProgressNotStorable):
        client.run(client.ops.progress("w1", [(c.id, c.token, "x" * (MAX_PROGRESS_BYTES + 1))], 0))
    # The script refuses a forged oversized value itself, before writing anything.
    call = ScriptCall(
        "progress",
        [client.keys.holders, client.keys.progress],
        [0, "w1", MAX_PROGRESS_BYTES, 2, c.id, c.token, "1", c.id, c.token, "1" * 3000],
    )
    with pytest.raises(ScriptError, match="BADPROGRESS"):
        client.run(_one(call))
    assert entries(client) == 0


def test_a_damaged_entry_reads_as_no_progress(client: Client) -> None:
    tid = client.submit("t")
    client.claim("w1", 1)
    client.redis.hset(client.keys.progress, tid, "not json")
    task = client.status(tid)
    assert (task.status, task.progress) == (TaskStatus.RUNNING, None)
    client.redis.hset(client.keys.progress, tid, json.dumps({"value": 1}))  # no "at"
    assert client.status(tid).progress is None
