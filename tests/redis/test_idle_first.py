"""Idle-first scale-down against a real redis-server: which workers are busy comes from
the leases themselves, not only from the registry's in-flight counts (those are as old as
each worker's last heartbeat, a few seconds: a worker that claimed a long task since
looks idle there, and removing it would interrupt that task)."""

from __future__ import annotations

from kubeq.protocol import AsyncClient, Client, QueueConfig, WorkerInfo
from kubeq_operator.core.scaling import ScalingPolicy, Tick
from kubeq_operator.engine.autoscaler import QueueAutoscaler
from kubeq_operator.engine.backend import PoolView, QueueRef
from kubeq_operator.engine.metrics import OperatorMetrics


class Pool:
    """A backend that only remembers what the autoscaler asked of it."""

    def __init__(self, replicas: int) -> None:
        self.replicas_, self.costs, self.decisions = replicas, dict[str, int](), 0

    async def view(self, ref: QueueRef) -> PoolView:
        return PoolView(self.replicas_, self.replicas_, str(self.decisions))

    async def scale(self, ref: QueueRef, replicas: int, basis: str | None = None) -> bool:
        self.replicas_, self.decisions = replicas, self.decisions + 1
        return True

    async def set_deletion_costs(self, ref: QueueRef, costs: dict[str, int]) -> None:
        self.costs = dict(costs)


async def _one_tick(redis_url: str, ref: QueueRef, config: QueueConfig, pool: Pool) -> Tick:
    """One autoscaler round over `pool` (1-4 workers, no stabilization window)."""
    policy = ScalingPolicy(min_replicas=1, max_replicas=4, scale_down_stabilization_seconds=0)
    client = await AsyncClient.from_url(redis_url, ref.name, ref.namespace, config)
    try:
        scaler = QueueAutoscaler(ref, policy, client, pool, OperatorMetrics())  # type: ignore[arg-type]
        return await scaler.tick()
    finally:
        await client.close()


async def test_a_worker_that_claimed_since_its_heartbeat_counts_as_busy(redis_url: str) -> None:
    ref = QueueRef("default", "idlefirst")
    config = QueueConfig(name=ref.name, namespace=ref.namespace)
    with Client.from_url(redis_url, ref.name, ref.namespace, config) as sync:
        # Two workers registered by their heartbeat, both idle then.
        for n in (1, 2):
            sync.heartbeat(f"w{n}", [], WorkerInfo(id=f"w{n}", pod=f"pod-{n}", concurrency=10))
        # w2 claims a task afterwards: its registry entry still says 0 in flight.
        sync.submit("long", 1)
        assert len(sync.claim("w2", 1).tasks) == 1
        assert {w.id: w.in_flight for w in sync.workers()} == {"w1": 0, "w2": 0}
    pool = Pool(replicas=2)
    # Nothing waits, one task runs: the rule wants 1 worker.
    tick = await _one_tick(redis_url, ref, config, pool)
    # Down to 1, and the one that goes is w1 (cost 0), never w2 (it holds the task).
    assert (tick.decision.replicas, tick.decision.direction) == (1, "down")
    assert pool.costs == {"pod-1": 0, "pod-2": 1}


async def test_busy_workers_by_lease_keep_the_pool(redis_url: str) -> None:
    ref = QueueRef("default", "keepbusy")
    config = QueueConfig(name=ref.name, namespace=ref.namespace)
    with Client.from_url(redis_url, ref.name, ref.namespace, config) as sync:
        for n in (1, 2, 3):
            sync.heartbeat(f"w{n}", [], WorkerInfo(id=f"w{n}", pod=f"pod-{n}", concurrency=10))
        sync.submit_many([{"type": "long", "payload": i} for i in range(3)])
        for n in (1, 2, 3):  # one long task each, claimed after the last heartbeat
            assert len(sync.claim(f"w{n}", 1).tasks) == 1
    pool = Pool(replicas=3)
    tick = await _one_tick(redis_url, ref, config, pool)
    # 3 in flight at target 100 recommends 1, but every worker holds a task: none goes.
    assert (tick.decision.replicas, tick.decision.direction) == (3, "none")
    assert "3 workers busy" in tick.decision.reason


async def test_a_worker_that_claimed_before_registering_counts_as_busy(redis_url: str) -> None:
    ref = QueueRef("default", "unregistered")
    config = QueueConfig(name=ref.name, namespace=ref.namespace)
    with Client.from_url(redis_url, ref.name, ref.namespace, config) as sync:
        sync.heartbeat("w1", [], WorkerInfo(id="w1", pod="pod-1", concurrency=10))
        sync.heartbeat("w2", [], WorkerInfo(id="w2", pod="pod-2", concurrency=10))
        sync.submit_many([{"type": "long", "payload": i} for i in range(2)])
        assert len(sync.claim("w1", 1).tasks) == 1
        # w3 just started: its claim loop ran before its first heartbeat.
        assert len(sync.claim("w3", 1).tasks) == 1
    pool = Pool(replicas=3)
    tick = await _one_tick(redis_url, ref, config, pool)
    # 2 in flight recommend 1 worker, but w1 and w3 each hold a task: only w2 may go.
    assert (tick.decision.replicas, tick.decision.direction) == (2, "down")
    assert "2 workers busy" in tick.decision.reason
