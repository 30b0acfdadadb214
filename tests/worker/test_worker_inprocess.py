"""The worker on the test's own event loop against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import kubeq_test_apps
import pytest
from worker_support import metric, parse_metrics, queue_config, until

from kubeq.protocol import Client, QueueConfig, TaskStatus
from kubeq.redis_server import free_port
from kubeq.worker import WorkerSettings, serve


@dataclass
class Running:
    port: int
    stop: asyncio.Event
    task: asyncio.Task[int]

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.port}{path}") as r:
            return r.status, await r.text()

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return parse_metrics((await self.get("/metrics"))[1])


@contextlib.asynccontextmanager
async def running(redis_url: str, config: QueueConfig, **settings: Any) -> AsyncIterator[Running]:
    port = free_port()
    ws = WorkerSettings(
        redis_url=redis_url, queue=config.name, queue_config=config, metrics_port=port, **settings
    )
    stop = asyncio.Event()
    r = Running(port, stop, asyncio.create_task(serve(ws, kubeq_test_apps.app, stop)))

    async def ready() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            return (await r.get("/readyz"))[0] == 200
        return False

    try:
        await until(ready, what="worker ready")
        yield r
    finally:
        stop.set()
        assert await asyncio.wait_for(r.task, 30) == 0


@pytest.fixture
def config() -> QueueConfig:
    return queue_config()


@pytest.fixture
def client(redis_url: str, config: QueueConfig) -> Any:
    with Client.from_url(redis_url, config.name, config=config) as c:
        yield c


def terminal(client: Client, ids: list[str]) -> bool:
    return all(client.status(i).status.terminal for i in ids)


async def test_handler_outcomes_become_settlements_and_metrics(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    submit = client.submit
    ids = {
        "echo": submit("echo", {"x": 1}),
        "flaky": submit("flaky", {"succeed_on": 2}),
        "retry_then_ok": submit("retry_then_ok"),
        "always_fails": submit("always_fails"),
        "permanent": submit("permanent"),
        "type_error": submit("type_error"),
        "only_retries_oserror": submit("only_retries_oserror"),
        "times_out": submit("times_out", max_attempts=2),
        "sync_times_out": submit("sync_times_out", max_attempts=1),
        "validated": submit("validated", {"sensor": "a", "value": 2}),
        "invalid": submit("validated", {"sensor": "a"}),
        "not_json": submit("not_json"),
        "unknown": submit("no.such.type"),
        "sync": submit("sync_sleep", {"seconds": 0.01}),
        "process": submit("in_process", 21),
    }
    # A record no parser can read, planted by hand where a claim will find it.
    client.redis.hset(client.keys.tasks, "bad1", "{not json")
    client.redis.rpush(client.keys.ready("default"), "bad1")

    async with running(redis_url, config) as w:
        await until(lambda: terminal(client, list(ids.values())), 30, "all tasks to end")
        await until(
            lambda: client.redis.zscore(client.keys.dead, "bad1") is not None,
            what="malformed record dead-lettered",
        )
        st = {k: client.status(v) for k, v in ids.items()}
        m = await w.metrics()
        healthz = await w.get("/healthz")

    done = TaskStatus.COMPLETED
    assert (st["echo"].status, st["echo"].result) == (done, {"x": 1})
    assert (st["flaky"].status, st["flaky"].result, st["flaky"].attempts) == (done, 2, 2)
    assert (st["retry_then_ok"].status, st["retry_then_ok"].result) == (done, 2)
    assert st["validated"].result == {"sensor": "a", "value": 4.0}
    assert (st["sync"].status, st["process"].result) == (done, 42)
    reasons = {k: t.reason for k, t in st.items() if t.status == TaskStatus.DEAD}
    assert reasons == {
        "always_fails": "attempts_exhausted",
        "permanent": "permanent_error",
        "type_error": "permanent_error",
        "only_retries_oserror": "permanent_error",
        "times_out": "timeout",
        "sync_times_out": "timeout",
        "invalid": "invalid_payload",
        "not_json": "result_not_json",
        "unknown": "unknown_task_type",
    }
    assert st["always_fails"].attempts == 3
    assert st["times_out"].attempts == 2
    error = st["permanent"].error
    assert error is not None
    assert "this can never work" in error.message
    assert "Permanent" in (error.traceback or "")
    info = json.loads(client.redis.hget(client.keys.dead_info, "bad1"))
    assert info["reason"] == "malformed_record"

    q = config.full_name
    assert metric(m, "kubeq_tasks_completed_total", queue=q, task_type="echo") == 1
    assert metric(m, "kubeq_tasks_completed_total", queue=q) == 6
    assert metric(m, "kubeq_tasks_retried_total", task_type="flaky") == 1
    assert metric(m, "kubeq_tasks_retried_total", task_type="times_out") == 1
    assert metric(m, "kubeq_tasks_retried_total", task_type="always_fails") == 2
    dead = {
        reason: metric(m, "kubeq_tasks_dead_lettered_total", queue=q, reason=reason)
        for reason in (
            "attempts_exhausted",
            "permanent_error",
            "timeout",
            "invalid_payload",
            "result_not_json",
            "unknown_task_type",
            "malformed_record",
        )
    }
    assert dead == {
        "attempts_exhausted": 1,
        "permanent_error": 3,
        "timeout": 2,
        "invalid_payload": 1,
        "result_not_json": 1,
        "unknown_task_type": 1,
        "malformed_record": 1,
    }
    # Unregistered types never become label values of their own.
    assert metric(m, "kubeq_tasks_claimed_total", task_type="no.such.type") == 0
    assert metric(m, "kubeq_tasks_claimed_total", task_type="unknown") == 1
    assert metric(m, "kubeq_tasks_failed_total", task_type="always_fails") == 3
    assert metric(m, "kubeq_tasks_failed_total", task_type="flaky") == 1
    # Every failure is a failure, not only "dead-lettered": timeouts, invalid payloads,
    # unstorable results, unknown types, malformed records.
    assert metric(m, "kubeq_tasks_failed_total", task_type="times_out") == 2
    assert metric(m, "kubeq_tasks_failed_total", task_type="sync_times_out") == 1
    assert metric(m, "kubeq_tasks_failed_total", task_type="validated") == 1
    assert metric(m, "kubeq_tasks_failed_total", task_type="not_json") == 1
    assert metric(m, "kubeq_tasks_failed_total", task_type="unknown") == 2
    assert metric(m, "kubeq_task_duration_seconds_count", task_type="echo") == 1
    assert metric(m, "kubeq_task_queue_wait_seconds_count", queue=q) >= len(ids)
    assert metric(m, "kubeq_tasks_in_flight", queue=q) == 0
    assert metric(m, "kubeq_worker_concurrency", queue=q) == 16
    assert metric(m, "kubeq_settles_refused_total", queue=q) == 0
    assert healthz[0] == 200


async def test_cancelling_a_running_task_stops_its_handler(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    tid = client.submit("sleep", {"seconds": 30})
    async with running(redis_url, config) as w:
        await until(lambda: client.status(tid).status == TaskStatus.RUNNING, what="running")
        client.cancel(tid)
        await until(lambda: client.status(tid).status == TaskStatus.CANCELLED, what="cancel")
        m = await w.metrics()
    assert metric(m, "kubeq_tasks_cancelled_total", task_type="sleep") == 1
    assert metric(m, "kubeq_tasks_completed_total") == 0


async def test_a_lost_lease_cancels_the_handler_and_is_never_settled(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    tid = client.submit("sleep", {"seconds": 1.0})
    async with running(redis_url, config) as w:
        await until(lambda: client.status(tid).status == TaskStatus.RUNNING, what="running")
        # Someone else now holds the lease (as after a reap and re-claim elsewhere).
        client.redis.hset(client.keys.holders, tid, "999999|thief|0")
        client.redis.zadd(client.keys.leases("default"), {tid: 2**50})  # never reaped

        async def lost() -> bool:
            return metric(await w.metrics(), "kubeq_leases_lost_total") == 1

        await until(lost, what="lease loss noticed")
        await asyncio.sleep(1.2)  # past the handler's natural end: it must not settle
        m = await w.metrics()
        assert metric(m, "kubeq_tasks_in_flight") == 0
    assert metric(m, "kubeq_tasks_completed_total") == 0
    assert metric(m, "kubeq_settles_refused_total") == 0
    assert client.redis.hget(client.keys.holders, tid) == "999999|thief|0"


async def test_drain_releases_unfinished_tasks_and_turns_not_ready(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    slow = [client.submit("sleep", {"seconds": 30}) for _ in range(2)]
    quick = client.submit("sleep", {"seconds": 0.3})
    async with running(redis_url, config, grace_seconds=1.0) as w:
        await until(
            lambda: all(client.status(t).status == TaskStatus.RUNNING for t in [*slow, quick]),
            what="all running",
        )
        w.stop.set()

        async def not_ready() -> bool:
            return (await w.get("/readyz"))[0] == 503

        await until(not_ready, 5, "readyz 503 while draining")
        assert (await w.get("/healthz"))[0] == 200
        await until(lambda: any(x.draining for x in client.workers()), 5, "draining registered")
    assert client.status(quick).status == TaskStatus.COMPLETED
    for t in slow:
        st = client.status(t)
        assert (st.status, st.attempts) == (TaskStatus.PENDING, 0)  # released, attempt refunded
    stats = client.stats()
    assert stats.ready == 2
    assert stats.in_flight == 0
    assert stats.counters["released"] == 2


# Commands a client sends itself; the rest of commandstats runs inside Lua scripts.
TOP_LEVEL = {"evalsha", "eval", "blpop", "set", "get", "ping", "script|load", "client|setinfo",
             "hello", "select"}  # fmt: skip


def top_level_calls(client: Client) -> int:
    stats = client.redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.removeprefix("cmdstat_") in TOP_LEVEL)


async def test_an_idle_worker_blocks_instead_of_polling(redis_url: str) -> None:
    # Given a worker on an empty queue (default idle wait: it blocks on the wake list)
    cfg = queue_config(lease_seconds=30.0, heartbeat_seconds=10.0)
    with Client.from_url(redis_url, cfg.name, config=cfg) as probe:
        async with running(redis_url, cfg):
            await asyncio.sleep(1.0)  # past start-up
            before = top_level_calls(probe)
            # When it idles for 4 seconds
            await asyncio.sleep(4.0)
            after = top_level_calls(probe)
            # Then it sent at most a few commands per second (a blocking wait, a
            # safety-net claim, a heartbeat, a maintenance turn), not a polling loop
            assert 0 < after - before <= 4 * 4, after - before
            # and a submit still reaches it at once (the wait is on the wake list)
            task_id = probe.submit("echo", {"x": 1})
            await until(lambda: probe.status(task_id).status.terminal, timeout=5, what="echo")


async def test_per_type_counters_reach_redis_for_stats(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    """Issue 13: submitted (counted by submit), completed/failed/retried/dead/runs and
    duration (flushed by the worker with its heartbeats, and at its clean exit)."""
    ids = [client.submit("echo", {"x": i}) for i in range(3)]
    ids += [client.submit("flaky", {"succeed_on": 2}), client.submit("permanent")]
    async with running(redis_url, config) as _:
        await until(lambda: terminal(client, ids), 30, "all tasks to end")
    types = client.type_stats()
    assert types["echo"]["submitted"] == types["echo"]["completed"] == types["echo"]["runs"] == 3
    assert "failed" not in types["echo"]
    assert types["flaky"] | {"duration_ms": 0} == {
        "submitted": 1,
        "runs": 2,
        "failed": 1,
        "retried": 1,
        "completed": 1,
        "duration_ms": 0,
    }
    assert (types["permanent"]["dead"], types["permanent"]["failed"]) == (1, 1)
    assert set(types["echo"]) == {"submitted", "completed", "runs", "duration_ms"}
