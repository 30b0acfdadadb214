"""Leader-safe scaling: a scale decision carries the view of the pool it came from and is
applied only if no other decision came since (a JSON-patch `test` on a decision counter),
so an operator replica with an old view cannot undo a newer decision, and one change is
never made (or counted, or announced) twice. Against the emulator and a real redis-server.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.k8s.emulator import KubeqEmulator
from tests.k8s.test_operator import NS, dep_path, get, taskqueue

from kubeq.protocol import AsyncClient, Client
from kubeq_operator.core.crd_schema import checked_spec
from kubeq_operator.core.manifests import OwnerRef
from kubeq_operator.core.scaling import ScalingPolicy
from kubeq_operator.engine.autoscaler import QueueAutoscaler
from kubeq_operator.engine.backend import PoolView, QueueRef
from kubeq_operator.engine.metrics import OperatorMetrics
from kubeq_operator.kube.backend import TASK_QUEUES, K8sBackend, KubeApi

pytestmark = pytest.mark.kmock(cls=KubeqEmulator)


class StaleView:
    """A replica that read the pool a moment ago: `view` answers that old read, every
    other call goes to the real backend."""

    def __init__(self, backend: K8sBackend, seen: PoolView) -> None:
        self.backend, self.seen = backend, seen

    async def view(self, ref: QueueRef) -> PoolView:
        return self.seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


async def deployed(api: KubeApi, redis_url: str, name: str) -> tuple[K8sBackend, QueueRef]:
    body = await api.create(TASK_QUEUES.path(NS), taskqueue(name, redis_url))
    spec = checked_spec(body)
    ref = QueueRef(NS, name)
    backend = K8sBackend(api)
    backend.own(ref, OwnerRef.from_body(body))
    await backend.apply(ref, spec, spec.to_queue_config(name, NS))
    return backend, ref


async def test_a_decision_from_an_old_view_is_refused(api: KubeApi, redis_url: str) -> None:
    backend, ref = await deployed(api, redis_url, "cas")
    first, stale = await backend.view(ref), await backend.view(ref)
    assert first.basis == stale.basis
    assert await backend.scale(ref, 5, first.basis)
    # The same basis again: another replica that read the pool before that decision.
    assert not await backend.scale(ref, 1, stale.basis)
    assert (await get(api, dep_path("cas")))["spec"]["replicas"] == 5
    # A fresh view decides again, and again only once.
    fresh = await backend.view(ref)
    assert fresh.replicas == 5
    assert fresh.basis != first.basis
    assert await backend.scale(ref, 3, fresh.basis)
    assert not await backend.scale(ref, 4, fresh.basis)
    assert (await get(api, dep_path("cas")))["spec"]["replicas"] == 3
    # Status writes and hand edits of other fields do not invalidate a view (no churn).
    view = await backend.view(ref)
    await api.patch(dep_path("cas"), {"status": {"readyReplicas": 3}})
    await api.patch(dep_path("cas"), {"metadata": {"labels": {"x": "y"}}})
    assert await backend.scale(ref, 2, view.basis)


async def test_two_replicas_make_one_change_once(api: KubeApi, redis_url: str) -> None:
    """Two autoscalers (two operator replicas, e.g. both active for a moment during a
    takeover) see the same burst: the pool is scaled once, one scale event is counted,
    and the slower one reports its decision as superseded."""
    backend, ref = await deployed(api, redis_url, "twice")
    policy = ScalingPolicy(min_replicas=1, max_replicas=8, target_backlog_per_replica=10)
    with Client.from_url(redis_url, "twice", NS) as producer:
        producer.submit_many({"type": "t", "payload": i} for i in range(35))
    metrics = [OperatorMetrics(), OperatorMetrics()]
    clients = [await AsyncClient.from_url(redis_url, "twice", NS) for _ in range(2)]
    try:
        a, b = (
            QueueAutoscaler(ref, policy, c, backend, m)
            for c, m in zip(clients, metrics, strict=True)
        )
        # Both read the pool before either writes: b's view is the old one once a decides.
        b.backend = StaleView(backend, await backend.view(ref))
        tick_a = await a.tick()
        tick_b = await b.tick()
        assert (tick_a.decision.replicas, tick_a.decision.direction) == (4, "up")
        assert (tick_b.decision.replicas, tick_b.decision.direction) == (1, "none")
        assert "superseded" in tick_b.decision.reason
        assert (await get(api, dep_path("twice")))["spec"]["replicas"] == 4
        counted = [
            m.registry.get_sample_value(
                "kubeq_scale_events_total", {"queue": str(ref), "direction": "up"}
            )
            for m in metrics
        ]
        assert counted == [1.0, 0.0]
        # With a fresh view b agrees and changes nothing.
        b.backend = backend
        tick_b = await b.tick()
        assert (tick_b.decision.replicas, tick_b.decision.direction) == (4, "none")
    finally:
        for c in clients:
            await c.close()
