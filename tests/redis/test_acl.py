"""The Redis ACL users of docs/security.md, exactly as written there: each role runs every
function it needs, and is refused what it does not need with PermissionDenied and nothing
written (a producer cannot settle or purge, a worker cannot rewrite the config, the
operator cannot run a write script, a viewer cannot write at all)."""

from __future__ import annotations

import asyncio
import random
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import redis
from kubeq.protocol import Client, PermissionDenied, QueueConfig, TaskError, WorkerInfo
from kubeq.protocol.keys import QueueKeys
from kubeq.protocol.workflow import Step, chain
from kubeq.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
NS, QUEUE = "acl", "jobs"
PASSWORD = "pw-for-tests"
CONFIG = QueueConfig(name=QUEUE, namespace=NS, max_attempts=2)


def documented_users() -> dict[str, list[str]]:
    """role → ACL rule tokens, from the ```acl block of docs/security.md, for this queue."""
    text = (ROOT / "docs" / "security.md").read_text()
    (block,) = re.findall(r"```acl\n(.*?)```", text, re.S)
    users = {}
    for line in block.strip().splitlines():
        line = line.replace("{NS/QUEUE}", f"{{{NS}/{QUEUE}}}").replace("CHANGE-ME", PASSWORD)
        tokens = shlex.split(line)
        assert tokens[0] == "user"
        users[tokens[1]] = tokens[1:]
    return users


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    users = documented_users()
    assert set(users) == {"producer", "worker", "operator", "viewer", "admin"}
    extra: tuple[str, ...] = ()
    for tokens in users.values():
        extra += ("--user", *tokens)
    with RedisServer(extra=extra) as s:
        yield s


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    r = redis.Redis(port=server.port, decode_responses=False)
    r.flushall()
    yield r
    r.close()


@pytest.fixture
def connect(server: RedisServer, admin: redis.Redis) -> Iterator[Callable[[str], Client]]:
    clients: list[Client] = []

    def make(role: str) -> Client:
        url = f"redis://{role}:{PASSWORD}@127.0.0.1:{server.port}/0"
        c = Client.from_url(url, QUEUE, NS, CONFIG)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def snapshot(admin: redis.Redis) -> dict[bytes, bytes | None]:
    return {k: admin.dump(k) for k in sorted(admin.scan_iter(match=b"kubeq:*"))}


def refused(admin: redis.Redis, action: Callable[[], Any]) -> None:
    """`action` raises PermissionDenied and leaves every key of the queue as it was."""
    before = snapshot(admin)
    with pytest.raises(PermissionDenied):
        action()
    assert snapshot(admin) == before


def held(tasks: list[Any]) -> list[tuple[str, int, int]]:
    return [(t.id, t.token, t.level_index) for t in tasks]


@pytest.fixture
def seeded(connect: Callable[[str], Client]) -> dict[str, Any]:
    """The config published (by the operator); one task dead-lettered, one running, one
    completed, one pending - each done by the role whose job it is."""
    operator, producer, worker = connect("operator"), connect("producer"), connect("worker")
    operator.publish_config()
    ids = producer.submit_many([{"type": "t", "payload": n} for n in range(4)])
    claim = worker.claim("w1", 3)
    dead, running, done = claim.tasks
    now = worker.clock()
    error = TaskError(type="Boom", message="no")
    assert worker.settle(
        [
            worker.ops.failure(dead, error, now, random.Random(1), permanent=True),
            worker.ops.completion(done, "ok", now),
        ]
    ) == [True, True]
    worker.heartbeat("w1", held([running]), WorkerInfo(id="w1", in_flight=1))
    assert worker.run(worker.ops.progress("w1", [(running.id, running.token, '"half"')], 0)) == [
        True
    ]
    return {"ids": ids, "running": running, "pending": ids[3], "done": done.id, "dead": dead.id}


def test_the_producer_runs_its_functions(
    connect: Callable[[str], Client], seeded: dict[str, Any]
) -> None:
    producer = connect("producer")
    first = producer.submit("t", {"a": 1}, idempotency_key="once")
    assert producer.submit("t", {"a": 1}, idempotency_key="once") == first
    later = producer.submit("t", None, delay=3600)
    assert producer.status(later).status == "scheduled"
    assert producer.status(seeded["running"].id).status == "running"
    assert producer.status(seeded["running"].id).progress.value == "half"  # type: ignore[union-attr]
    assert producer.result(seeded["done"], timeout=2) == "ok"
    assert producer.cancel(later) == "cancelled"
    flow = producer.submit_workflow(chain(Step("a"), Step("b")), on_failure=Step("c"))
    assert producer.workflow(flow).state == "running"
    assert producer.cancel_workflow(flow) == "running"


def test_the_producer_cannot_settle_claim_purge_or_reconfigure(
    connect: Callable[[str], Client], admin: redis.Redis, seeded: dict[str, Any]
) -> None:
    producer = connect("producer")
    running = seeded["running"]
    now = producer.clock()
    refused(admin, lambda: producer.settle([producer.ops.completion(running, "forged", now)]))
    refused(admin, lambda: producer.claim("thief", 5))
    refused(admin, lambda: producer.heartbeat("thief", held([running]), WorkerInfo(id="x")))
    refused(admin, lambda: producer.purge_dead([seeded["dead"]]))
    refused(admin, lambda: producer.requeue_dead([seeded["dead"]]))
    refused(admin, lambda: producer.reap())
    forged = [(running.id, running.token, '"forged"')]
    refused(admin, lambda: producer.run(producer.ops.progress("w1", forged, 0)))
    refused(admin, lambda: producer.publish_config())
    refused(admin, lambda: producer.workers())
    refused(admin, lambda: producer.acquire_maintenance("x", 1000))


def test_the_worker_runs_its_functions(
    connect: Callable[[str], Client], admin: redis.Redis, seeded: dict[str, Any]
) -> None:
    worker = connect("worker")
    running = seeded["running"]
    reply = worker.heartbeat("w1", held([running]), WorkerInfo(id="w1", in_flight=1))
    assert list(reply.lost) == []
    assert worker.run(worker.ops.progress("w1", [(running.id, running.token, "2")], 0)) == [True]
    assert worker.wait_for_work(0.1) in (True, False)
    assert worker.abandon_claim("w1", "a-claim-given-up").tasks == []  # a drain's way out
    claim = worker.claim("w1", 5)
    assert [t.id for t in claim.tasks] == [seeded["pending"]]
    now = worker.clock()
    settle = [worker.ops.completion(t, n, now) for n, t in enumerate([running, *claim.tasks])]
    assert worker.settle(settle) == [True, True]
    flow = connect("producer").submit_workflow(chain(Step("a"), Step("b")))
    (first,) = worker.claim("w1", 5).tasks
    assert worker.settle([worker.ops.completion(first, 1, now)]) == [True]
    (second,) = worker.claim("w1", 5).tasks
    assert second.id == f"{flow}.2"
    assert worker.settle([worker.ops.completion(second, 2, now)]) == [True]
    follow_up = worker.submit("t.next", {"from": running.id})
    assert worker.status(follow_up).status == "pending"
    assert worker.acquire_maintenance("w1", 1000) is True
    worker.reap()
    assert worker.expire_dead_letters() == 0
    from kubeq.protocol import browse

    worker.run(browse.tally(worker.ops, {("t", "completed"): 2, ("t", "duration_ms"): 5}))
    assert admin.hget(QueueKeys(NS, QUEUE).type_counters, "t|completed") == b"2"


def test_the_worker_cannot_reconfigure_or_delete_the_queue(
    connect: Callable[[str], Client], admin: redis.Redis, seeded: dict[str, Any]
) -> None:
    worker = connect("worker")
    keys = QueueKeys(NS, QUEUE)
    refused(admin, lambda: worker.publish_config())
    refused(admin, lambda: worker.submit("t", idempotency_key="k"))
    refused(admin, lambda: worker.run(_raw(("UNLINK", keys.tasks))))
    refused(admin, lambda: worker.run(_raw(("SCAN", 0))))


def test_the_operator_runs_its_functions(
    connect: Callable[[str], Client], admin: redis.Redis, seeded: dict[str, Any]
) -> None:
    from kubeq_operator.kube.redis_access import purge

    operator = connect("operator")
    stats = operator.stats()
    assert (stats.ready, stats.in_flight, stats.dead) == (1, 1, 1)
    assert [w.id for w in operator.workers()] == ["w1"]
    assert operator.lease_holders() == {"w1": 1}  # idle-first removal reads the leases
    operator.publish_config()
    operator.record_scale({"at": 1, "from": 0, "to": 1, "reason": "backlog"})
    assert b'"reason":"backlog"' in admin.lindex(QueueKeys(NS, QUEUE).scale_log, 0)

    async def delete_everything() -> int:
        from kubeq.protocol import AsyncClient

        url = f"redis://operator:{PASSWORD}@127.0.0.1:{admin.connection_pool.connection_kwargs['port']}/0"
        async with await AsyncClient.from_url(url, QUEUE, NS, CONFIG) as client:
            return await purge(client)

    assert asyncio.run(delete_everything()) > 0
    assert snapshot(admin) == {}


def test_the_operator_cannot_run_any_write_script(
    connect: Callable[[str], Client], admin: redis.Redis, seeded: dict[str, Any]
) -> None:
    operator = connect("operator")
    running = seeded["running"]
    now = operator.clock()
    refused(admin, lambda: operator.submit("t"))
    refused(admin, lambda: operator.claim("op", 1))
    refused(admin, lambda: operator.settle([operator.ops.completion(running, "x", now)]))
    refused(admin, lambda: operator.cancel(seeded["pending"]))
    refused(admin, lambda: operator.requeue_dead([seeded["dead"]]))
    refused(admin, lambda: operator.purge_dead([seeded["dead"]]))
    refused(admin, lambda: operator.pause())
    refused(admin, lambda: operator.run_now(seeded["pending"]))
    forged = [(running.id, running.token, '"forged"')]
    refused(admin, lambda: operator.run(operator.ops.progress("w1", forged, 0)))


def test_the_viewer_reads_everything_and_writes_nothing(
    connect: Callable[[str], Client], admin: redis.Redis, seeded: dict[str, Any]
) -> None:
    viewer = connect("viewer")
    assert viewer.stats().dead == 1
    assert viewer.status(seeded["running"].id).status == "running"
    assert viewer.result(seeded["done"], timeout=2) == "ok"
    assert [w.id for w in viewer.workers()] == ["w1"]
    assert [d.task.id for d in viewer.dead_letters()] == [seeded["dead"]]
    assert [t.id for t in viewer.finished()] == [seeded["done"]]
    assert [t.id for t in viewer.list_tasks("running").tasks] == [seeded["running"].id]
    (listed,) = viewer.list_tasks("running").tasks
    assert listed.progress is not None
    assert listed.progress.value == "half"
    assert [t.id for t in viewer.list_tasks("pending").tasks] == [seeded["pending"]]
    assert [t.id for t in viewer.list_tasks("completed").tasks] == [seeded["done"]]
    assert [t.id for t in viewer.list_tasks("dead").tasks] == [seeded["dead"]]
    assert viewer.scale_log() == []
    running = seeded["running"]
    now = viewer.clock()
    refused(admin, lambda: viewer.pause())
    refused(admin, lambda: viewer.run_now(seeded["pending"]))
    refused(admin, lambda: viewer.requeue_dead_where(task_type="t"))
    refused(admin, lambda: viewer.submit("t"))
    refused(admin, lambda: viewer.cancel(seeded["pending"]))
    refused(admin, lambda: viewer.settle([viewer.ops.completion(running, "x", now)]))
    refused(admin, lambda: viewer.requeue_dead([seeded["dead"]]))
    refused(admin, lambda: viewer.purge_dead([seeded["dead"]]))
    refused(admin, lambda: viewer.publish_config())


def test_the_admin_steers_the_queue_and_cannot_run_tasks(
    connect: Callable[[str], Client], admin: redis.Redis, seeded: dict[str, Any]
) -> None:
    """The role of `kubeq pause/resume/retry/dlq` and of a dashboard started with a token."""
    boss, producer, worker = connect("admin"), connect("producer"), connect("worker")
    assert boss.pause("maintenance") is True
    assert boss.stats().paused is True
    assert worker.claim("w1", 5).tasks == []  # the worker reads the paused key
    assert boss.resume() is True
    later = producer.submit("t", delay=600)
    assert boss.run_now(later) is True
    assert [t.id for t in boss.list_tasks("dead").tasks] == [seeded["dead"]]
    assert boss.requeue_dead_where(task_type="t") == [seeded["dead"]]
    claimed = worker.claim("w2", 5).tasks
    now = worker.clock()
    error = TaskError(type="Boom", message="no")
    worker.settle(
        [worker.ops.failure(c, error, now, random.Random(1), permanent=True) for c in claimed]
    )
    assert len(boss.purge_dead_where(task_type="t")) == len(claimed)
    running = seeded["running"]
    refused(admin, lambda: boss.submit("t"))
    refused(admin, lambda: boss.claim("boss", 1))
    refused(admin, lambda: boss.settle([boss.ops.completion(running, "x", boss.clock())]))
    refused(admin, lambda: boss.cancel(running.id))
    refused(admin, lambda: boss.publish_config())
    refused(admin, lambda: boss.run(_raw(("UNLINK", boss.keys.tasks))))


def test_a_script_is_refused_whole_when_one_declared_key_is_not_writable(
    server: RedisServer, admin: redis.Redis
) -> None:
    """The Redis 7 behaviour the rules rely on: EVALSHA checks every declared key before the
    script runs, so a refusal can never leave a half-written state."""
    admin.execute_command("ACL", "SETUSER", "half", "on", ">pw", "+@all", "~a", "%R~b")
    r = redis.Redis(port=server.port, username="half", password="pw")
    try:
        script = "redis.call('SET', KEYS[1], 'written'); redis.call('SET', KEYS[2], 'x')"
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.eval(script, 2, "a", "b")
        assert admin.get("a") is None
        assert r.eval_ro("return redis.call('GET', KEYS[1])", 1, "b") is None
    finally:
        r.close()


def _raw(args: tuple[Any, ...]) -> Any:
    from kubeq.protocol.ops import Command

    def op() -> Any:
        return (yield Command(args))

    return op()


def test_the_cli_exits_7_on_a_refusal(server: RedisServer, seeded: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from kubeq.cli import cli

    url = f"redis://viewer:{PASSWORD}@127.0.0.1:{server.port}/0"
    base = ["--redis-url", url, "-n", NS, "-q", QUEUE]
    result = CliRunner().invoke(cli, [*base, "submit", "t", "{}"])
    assert result.exit_code == 7, result.output
    assert result.stderr.startswith("error: Redis at redis://viewer:***@127.0.0.1:")
    assert "denied this ACL user" in result.stderr
    assert PASSWORD not in result.output
    assert CliRunner().invoke(cli, [*base, "stats"]).exit_code == 0
