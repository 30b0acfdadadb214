"""Issue 14: workflows on a real redis-server: chains feed results, chords fire once, a
failure fails the workflow once, a cancel cancels its pending steps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from random import Random

import pytest
from tests.conftest import FakeClock

from kubeq.protocol import (
    AsyncClient,
    Client,
    InvalidTask,
    QueueFull,
    TaskExists,
    TaskNotFound,
    TaskStatus,
)
from kubeq.protocol.models import ClaimedTask, TaskError
from kubeq.protocol.workflow import Step, chain, chord, group, step_payload


def run_one(client: Client, fn: object = None, worker: str = "w") -> ClaimedTask | None:
    """Claim one task and complete it with fn(payload) (default: echo)."""
    claim = client.claim(worker, 1)
    if not claim.tasks:
        return None
    (c,) = claim.tasks
    payload = step_payload(c.task)
    result = fn(c.task.type, payload) if callable(fn) else [c.task.type, payload]
    assert client.settle([client.ops.completion(c, result, 0)]) == [True]
    return c


def fail_one(client: Client, permanent: bool, worker: str = "w") -> ClaimedTask:
    (c,) = client.claim(worker, 1).tasks
    err = TaskError(type="Boom", message="boom")
    s = client.ops.failure(c, err, 0, Random(1), permanent=permanent, delay=0)
    assert client.settle([s]) == [True]
    return c


def test_a_chain_feeds_each_result_to_the_next_step(client: Client) -> None:
    wf = client.submit_workflow(
        chain(Step("add", 1), Step("double"), Step("tag", {"fixed": True}), Step("last"))
    )
    assert client.workflow(wf).state == "running"
    states = [s.status for s in client.workflow(wf).steps]
    assert states == ["pending", "waiting", "waiting", "waiting"]

    def fn(kind: str, payload: object) -> object:
        if kind == "add":
            return 2
        if kind == "double":
            assert isinstance(payload, int)
            return payload * 2
        return payload

    seen = []
    while (c := run_one(client, fn)) is not None:
        seen.append((c.task.type, step_payload(c.task)))
    assert seen == [("add", 1), ("double", 2), ("tag", {"fixed": True}), ("last", {"fixed": True})]
    status = client.workflow(wf)
    assert status.state == "completed"
    assert [s.status for s in status.steps] == ["completed"] * 4
    assert client.status(f"{wf}.4").result == {"fixed": True}


def test_a_chord_callback_gets_the_group_results_in_declaration_order(client: Client) -> None:
    wf = client.submit_workflow(
        chord(group(*(Step("part", i) for i in range(5))), Step("sum")), workflow_id="sums"
    )
    assert wf == "sums"
    parts = client.claim("w", 10).tasks
    assert sorted(c.task.payload for c in parts) == [0, 1, 2, 3, 4]
    # Finish them in reverse order, two per settle batch: the callback waits for the last.
    rev = list(reversed(parts))
    for batch in (rev[:2], rev[2:4]):
        client.settle([client.ops.completion(c, c.task.payload * 10, 0) for c in batch])
        assert client.claim("w", 10).tasks == []
    client.settle([client.ops.completion(rev[4], rev[4].task.payload * 10, 0)])
    (callback,) = client.claim("w", 10).tasks
    assert callback.task.type == "sum"
    assert step_payload(callback.task) == [0, 10, 20, 30, 40]
    client.settle([client.ops.completion(callback, 100, 0)])
    assert client.workflow(wf).state == "completed"


def test_a_group_member_that_retries_does_not_fail_the_workflow(client: Client) -> None:
    wf = client.submit_workflow(chord([Step("a"), Step("b")], Step("cb")))
    fail_one(client, permanent=False)  # a retry: attempt 1 of 3
    assert client.workflow(wf).state == "running"
    while run_one(client) is not None:
        pass
    status = client.workflow(wf)
    assert status.state == "completed"
    assert [s.status for s in status.steps] == ["completed"] * 3


def test_a_failed_step_fails_the_workflow_once_runs_on_failure_and_cancels_waiting_steps(
    client: Client,
) -> None:
    wf = client.submit_workflow(
        chain(group(Step("a"), Step("b")), Step("cb"), Step("after")),
        on_failure=Step("alert"),
    )
    a = fail_one(client, permanent=True)
    status = client.workflow(wf)
    assert status.state == "failed"
    by_id = {s.id: s for s in status.steps}
    assert by_id[f"{wf}.3"].status == "cancelled"
    assert by_id[f"{wf}.4"].status == "cancelled"
    # b still runs; then the on-failure step, fed the failed step's outcome, once.
    ran = []
    while (c := run_one(client)) is not None:
        ran.append(c)
    assert sorted(c.task.type for c in ran) == ["alert", "b"]
    alert = next(c for c in ran if c.task.type == "alert")
    outcome = step_payload(alert.task)
    assert outcome["status"] == "dead"
    assert outcome["error"]["message"] == "boom"
    assert a.task.type == "a"
    assert client.workflow(wf).state == "failed"
    assert client.claim("w", 10).tasks == []


def test_a_completed_workflow_drops_its_on_failure_step(client: Client) -> None:
    wf = client.submit_workflow(chain(Step("a"), Step("b")), on_failure=Step("alert"))
    while run_one(client) is not None:
        pass
    status = client.workflow(wf)
    assert status.state == "completed"
    assert [s.status for s in status.steps] == ["completed", "completed", "gone"]
    assert client.claim("w", 10).tasks == []
    assert client.stats().backlog == 0


def test_cancelling_a_workflow_cancels_pending_steps_and_stops_running_ones(
    client: Client,
) -> None:
    wf = client.submit_workflow(
        chain(group(Step("a"), Step("b"), Step("c")), Step("cb")), on_failure=Step("alert")
    )
    (running,) = client.claim("w", 1).tasks
    assert client.cancel_workflow(wf) == "running"
    status = client.workflow(wf)
    assert status.state == "cancelled"
    states = {s.id: s.status for s in status.steps}
    assert states[running.id] == "running"
    assert client.status(running.id).cancel_requested
    assert [states[f"{wf}.{i}"] for i in (2, 3, 4, 5)] == ["cancelled"] * 4
    # The running step completing anyway releases nothing.
    client.settle([client.ops.completion(running, 1, 0)])
    assert client.claim("w", 10).tasks == []
    assert client.cancel_workflow(wf) == "cancelled"
    assert client.cancel_workflow("nope") == "unknown"


def test_cancelling_one_waiting_step_fails_its_workflow(client: Client) -> None:
    wf = client.submit_workflow(chain(Step("a"), Step("b")), on_failure=Step("alert"))
    assert client.cancel(f"{wf}.2") == "cancelled"
    assert client.status(f"{wf}.2").status == TaskStatus.CANCELLED
    assert client.workflow(wf).state == "failed"
    run_one(client)  # a
    c = run_one(client)  # the on-failure step
    assert c is not None
    assert c.task.type == "alert"
    assert client.claim("w", 10).tasks == []


def test_a_step_dead_lettered_by_the_reaper_fails_its_workflow(
    client: Client, clock: FakeClock
) -> None:
    wf = client.submit_workflow(
        chain(Step("a", max_attempts=1), Step("b")), on_failure=Step("alert")
    )
    client.claim("w", 1)  # its worker dies
    clock.advance(client.config.lease_seconds + 1)
    report = client.reap()
    assert report.dead == [f"{wf}.1"]
    assert client.workflow(wf).state == "failed"
    assert client.status(f"{wf}.2").status == TaskStatus.CANCELLED
    c = run_one(client)
    assert c is not None
    assert c.task.type == "alert"
    assert step_payload(c.task)["reason"] == "lease_expired"


def test_workflow_ids_are_unique_and_bad_shapes_are_invalid(client: Client) -> None:
    client.submit_workflow(Step("a"), workflow_id="one")
    with pytest.raises(TaskExists, match="workflow id one"):
        client.submit_workflow(Step("a"), workflow_id="one")
    with pytest.raises(InvalidTask):
        client.submit_workflow(group())
    with pytest.raises(InvalidTask):
        client.submit_workflow(Step("a"), workflow_id="bad id")
    with pytest.raises(InvalidTask):
        client.submit_workflow(group(*(Step("x") for i in range(1001))))
    assert client.stats().backlog == 1


def test_a_workflow_that_would_overfill_the_queue_is_refused_whole(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(max_backlog=5)
    client.submit_many([{"type": "t"}] * 2)
    with pytest.raises(QueueFull, match="backlog 2 \\+ 4 new"):
        client.submit_workflow(chain(Step("a"), Step("b"), Step("c")), on_failure=Step("x"))
    assert client.stats().backlog == 2
    assert client.redis.hlen(client.keys.flow) == 0
    client.submit_workflow(chain(Step("a"), Step("b"), Step("c")))


def test_cancelling_a_pending_step_fails_its_workflow(client: Client) -> None:
    wf = client.submit_workflow(chain(Step("a"), Step("b")), on_failure=Step("alert"))
    assert client.cancel(f"{wf}.1") == "cancelled"
    status = client.workflow(wf)
    assert status.state == "failed"
    assert [s.status for s in status.steps] == ["cancelled", "cancelled", "pending"]
    c = run_one(client)
    assert c is not None
    assert (c.task.type, step_payload(c.task)["status"]) == ("alert", "cancelled")


async def test_the_async_client_submits_reads_and_cancels_workflows(
    redis_url: str, client: Client
) -> None:
    q = await AsyncClient.from_url(redis_url, client.config.name, config=client.config)
    try:
        wf = await q.submit_workflow(chord([Step("a"), Step("b")], Step("c")), workflow_id="aw")
        assert wf == "aw"
        assert [s.status for s in (await q.workflow(wf)).steps] == [
            "pending",
            "pending",
            "waiting",
        ]
        assert await q.cancel_workflow(wf) == "running"
        assert (await q.workflow(wf)).state == "cancelled"
    finally:
        await q.close()


def test_an_ended_workflow_is_forgotten_after_the_result_ttl_by_later_settles(
    client: Client, clock: FakeClock
) -> None:
    wf = client.submit_workflow(chain(Step("a"), Step("b")))
    while run_one(client) is not None:
        pass
    assert client.workflow(wf).state == "completed"
    clock.advance(client.config.result_ttl_seconds + 1)
    client.submit("plain")
    run_one(client)  # an ordinary task's settle prunes what expired
    with pytest.raises(TaskNotFound):
        client.workflow(wf)
    assert client.redis.hlen(client.keys.flows) == 0
    assert client.redis.zcard(client.keys.flows_expiry) == 0


def test_two_last_members_finishing_at_once_release_the_callback_once(
    client: Client, make_client: Callable[..., Client]
) -> None:
    other = make_client(name=client.config.name)
    for round_ in range(30):
        wf = client.submit_workflow(chord([Step("a"), Step("b")], Step("cb")))
        a, b = client.claim("w1", 2).tasks
        if round_ % 2:  # both in one settle batch
            client.settle([client.ops.completion(a, 1, 0), client.ops.completion(b, 2, 0)])
        else:  # in two settles sent at the same moment from two connections
            barrier = threading.Barrier(2)
            applied: list[list[bool]] = []

            threads = [
                threading.Thread(target=_settle_at_once, args=(client, a, 1, barrier, applied)),
                threading.Thread(target=_settle_at_once, args=(other, b, 2, barrier, applied)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert applied == [[True], [True]]
        (cb,) = client.claim("w1", 10).tasks
        assert cb.id == f"{wf}.3"
        assert step_payload(cb.task) == [1, 2]
        client.settle([client.ops.completion(cb, 3, 0)])
        assert client.claim("w1", 10).tasks == []
        assert client.workflow(wf).state == "completed"


def _settle_at_once(
    c: Client, t: ClaimedTask, v: int, gate: threading.Barrier, out: list[list[bool]]
) -> None:
    gate.wait()
    out.append(c.settle([c.ops.completion(t, v, 0)]))
