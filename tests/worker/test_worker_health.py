"""Issue 10 item 9 and issue 9 items 6, 12: probes that tell the truth, a settle batch that
one task cannot poison, an idle wait shorter than the socket timeout, no spurious lost
lease when a heartbeat races a settle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import kubeq_test_apps
import redis.exceptions
from worker_support import queue_config, until

from kubeq.metrics import WorkerMetrics
from kubeq.protocol import Client, QueueConfig, Settlement, TaskStatus
from kubeq.redis_server import free_port
from kubeq.worker import serve
from kubeq.worker.batcher import SettleBatcher
from kubeq.worker.breaker import CircuitBreaker
from kubeq.worker.health import HealthInputs, verdict
from kubeq.worker.ledger import Ledger
from kubeq.worker.settings import WorkerSettings, idle_wait_cap


def inputs(**kw: Any) -> HealthInputs:
    base: dict[str, Any] = {
        "now": 1000.0, "draining": False, "breaker_closed": True, "last_redis_ok": 999.0,
        "settle_failing_since": None, "last_progress": 999.0, "slots_full": False,
        "work_waiting": False, "stall_seconds": 60.0,
        "ready_window": 15.0, "loop_healthy": True,
    }  # fmt: skip
    return HealthInputs(**{**base, **kw})


def test_liveness_fails_only_when_no_progress_is_possible_for_the_stall_window() -> None:
    assert verdict(inputs()).live
    stuck = {"last_progress": 1000.0 - 61, "slots_full": True, "work_waiting": True}
    assert not verdict(inputs(**stuck)).live  # every slot stuck while work waits
    assert verdict(inputs(**{**stuck, "work_waiting": False})).live  # long tasks, no backlog
    assert verdict(inputs(**{**stuck, "last_progress": 1000.0 - 59})).live  # not yet
    assert not verdict(inputs(settle_failing_since=1000.0 - 61)).live  # settles keep failing
    assert verdict(inputs(settle_failing_since=1000.0 - 59)).live  # not for long yet
    assert not verdict(inputs(loop_healthy=False)).live


def test_readiness_is_false_while_settles_fail_or_redis_is_silent_or_draining() -> None:
    assert verdict(inputs()).ready
    assert not verdict(inputs(settle_failing_since=990.0)).ready
    assert not verdict(inputs(draining=True)).ready
    assert not verdict(inputs(breaker_closed=False)).ready
    assert not verdict(inputs(last_redis_ok=1000.0 - 16)).ready
    assert "settle" in verdict(inputs(settle_failing_since=990.0)).ready_reason


def test_the_idle_wait_is_always_shorter_than_the_socket_timeout() -> None:
    s = WorkerSettings(idle_wait_seconds=30)
    assert idle_wait_cap(s.idle_wait_seconds, socket_timeout=5.0) < 5.0
    assert idle_wait_cap(1.0, socket_timeout=5.0) == 1.0
    assert 0 < idle_wait_cap(1.0, socket_timeout=0.5) < 0.5
    assert idle_wait_cap(3.0, socket_timeout=None) == 3.0


class FlakySettler:
    """Refuses any batch holding a poisoned id (as a script error would), or fails like an
    out-of-memory Redis a few times."""

    def __init__(self, poisoned: set[str] = frozenset(), oom: int = 0) -> None:  # type: ignore[assignment]
        self.poisoned = poisoned
        self.oom = oom
        self.applied: list[str] = []

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        if self.oom:
            self.oom -= 1
            raise redis.exceptions.OutOfMemoryError("OOM command not allowed")
        if any(s.task_id in self.poisoned for s in settlements):
            raise redis.exceptions.ResponseError("script error")
        self.applied += [s.task_id for s in settlements]
        return [True] * len(settlements)


class Item:
    def __init__(self, tid: str) -> None:
        self.settlement = Settlement(tid, 1, 1, "complete")


async def run_batch(settler: FlakySettler, ids: list[str]) -> dict[str, bool | None]:
    seen: dict[str, bool | None] = {}

    def on_settled(batch: list[Any], results: list[bool | None]) -> None:
        for item, ok in zip(batch, results, strict=True):
            seen[item.settlement.task_id] = ok

    breaker = CircuitBreaker(3, 0.001, 0.01, rng=random.Random(1))
    b = SettleBatcher(settler, breaker, on_settled, flush_delay=0.01)
    b.start()
    for tid in ids:
        b.add(Item(tid))
    assert await b.flush(5)
    await b.stop()
    return seen


async def test_one_refused_settlement_does_not_drop_its_batch() -> None:
    ids = [f"t{i}" for i in range(20)]
    settler = FlakySettler(poisoned={"t7"})
    seen = await run_batch(settler, ids)
    assert sorted(settler.applied) == sorted(set(ids) - {"t7"})
    assert seen["t7"] is None
    assert all(seen[t] for t in ids if t != "t7")


async def test_out_of_memory_on_settle_is_transient_and_retried() -> None:
    settler = FlakySettler(oom=2)
    seen = await run_batch(settler, ["a", "b"])
    assert seen == {"a": True, "b": True}


def test_a_lost_report_for_a_lease_being_settled_is_not_a_lost_lease() -> None:
    ledger = Ledger(WorkerMetrics("default/q"))
    ledger.hold("t1", 5, 1)
    ledger.settling("t1", 5)
    assert ledger.is_settling("t1", 5)
    assert not ledger.is_settling("t1", 6)
    ledger.drop("t1", 5)
    assert not ledger.is_settling("t1", 5)


# -- against a real worker and a real redis-server -----------------------------------------


async def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, json.loads(await r.text())


@contextlib.asynccontextmanager
async def worker_on(redis_url: str, config: QueueConfig, **settings: Any) -> AsyncIterator[int]:
    port = free_port()
    ws = WorkerSettings(
        redis_url=redis_url, queue=config.name, queue_config=config, metrics_port=port, **settings
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(ws, kubeq_test_apps.app, stop))

    async def up() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            return (await get(port, "/readyz"))[0] == 200
        return False

    try:
        await until(up, what="worker ready")
        yield port
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def test_healthz_fails_when_every_slot_is_stuck_while_work_waits(redis_url: str) -> None:
    config = queue_config()
    with Client.from_url(redis_url, config.name, config=config) as client:
        async with worker_on(
            redis_url, config, concurrency=1, liveness_stall_seconds=0.3, grace_seconds=0.2
        ) as port:
            # The window is raised to twice the longest handler timeout (0.5 s): 1 s.
            client.submit("sleep", {"seconds": 30})  # no timeout: holds the only slot
            await asyncio.sleep(1.5)
            status, body = await get(port, "/healthz")
            assert status == 200, body  # a slot busy, nothing waiting: not stuck
            client.submit("echo", 1)  # now work waits and nothing can take it

            async def unhealthy() -> bool:
                return (await get(port, "/healthz"))[0] == 503

            await until(unhealthy, 10, "healthz 503")
            body = (await get(port, "/healthz"))[1]
            assert "every slot stuck" in body["reason"], body


async def test_readyz_is_false_while_settles_fail_and_the_settle_retries(
    redis_url: str,
) -> None:
    config = queue_config()
    with Client.from_url(redis_url, config.name, config=config) as client:
        tid = client.submit("sleep", {"seconds": 0.8})
        async with worker_on(redis_url, config) as port:
            await until(lambda: client.status(tid).status == TaskStatus.RUNNING, what="running")
            client.redis.config_set("maxmemory", "1")  # every write refused: OOM
            try:

                async def not_ready() -> bool:
                    return (await get(port, "/readyz"))[0] == 503

                await until(not_ready, 10, "readyz 503 while settles fail")
            finally:
                client.redis.config_set("maxmemory", "0")
            await until(lambda: client.status(tid).status.terminal, 15, "settled after OOM")
            assert (await get(port, "/readyz"))[0] == 200
        st = client.status(tid)
        assert (st.status, st.attempts) == (TaskStatus.COMPLETED, 1)


async def test_a_heartbeat_racing_a_settle_reports_no_lost_lease(redis_url: str) -> None:
    from kubeq.protocol import AsyncClient
    from kubeq.worker.runtime import Worker

    config = queue_config()
    ws = WorkerSettings(redis_url=redis_url, queue=config.name, queue_config=config)
    client = await AsyncClient.from_url(redis_url, config.name, config=config)
    try:
        w = Worker(ws, kubeq_test_apps.app, client)  # loops not started: we drive it
        tid = await client.submit("echo", 1)
        (ct,) = (await client.claim(w.id, 1)).tasks
        w._start(ct, 0)
        await until(lambda: len(w.batcher) == 1, what="the outcome queued for settling")
        # The settle reaches Redis, but its reply is not processed yet ...
        pending = [item.settlement for item in w.batcher._pending]
        assert await client.settle(pending) == [True]
        # ... when a heartbeat that still lists the lease comes back with it "lost".
        await w.heartbeat()
        assert w.metrics.leases_lost._value.get() == 0
        assert (await client.status(tid)).status == TaskStatus.COMPLETED
        w.runner.shutdown()
    finally:
        await client.close()


async def test_healthz_fails_when_settles_keep_failing_past_the_stall_window(
    redis_url: str,
) -> None:
    config = queue_config()
    with Client.from_url(redis_url, config.name, config=config) as client:
        tid = client.submit("sleep", {"seconds": 0.3})
        async with worker_on(redis_url, config, liveness_stall_seconds=0.3) as port:
            await until(lambda: client.status(tid).status == TaskStatus.RUNNING, what="running")
            client.redis.config_set("maxmemory", "1")  # the settle is refused: OOM
            try:

                async def dead() -> bool:
                    status, body = await get(port, "/healthz")
                    return status == 503 and "settles failing" in body["reason"]

                await until(dead, 10, "healthz 503 while settles keep failing")
            finally:
                client.redis.config_set("maxmemory", "0")

            async def alive() -> bool:
                return (await get(port, "/healthz"))[0] == 200

            await until(alive, 15, "healthz 200 once the settle applied")
        assert client.status(tid).status == TaskStatus.COMPLETED
