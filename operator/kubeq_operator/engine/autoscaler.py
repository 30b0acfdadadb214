"""One autoscaler tick for one queue: read Redis, decide, mark idle workers, scale.

Shared by the kopf timer (Kubernetes backend) and `kubeq up` (local backend). The decision
itself is the pure `decide_replicas`; this is the thin shell around it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from kubeq.protocol import (
    AsyncClient,
    ConfigError,
    ConnectionFailed,
    KubeqError,
    PermissionDenied,
    QueueStats,
    WorkerInfo,
)
from kubeq_operator.core.manifests import deletion_cost_annotations
from kubeq_operator.core.scaling import (
    Decision,
    History,
    Observation,
    ScalingPolicy,
    Tick,
    decide_replicas,
    keep_busy,
)
from kubeq_operator.engine.backend import Backend, QueueRef
from kubeq_operator.engine.metrics import OperatorMetrics

log = logging.getLogger(__name__)


class QueueAutoscaler:
    def __init__(
        self,
        ref: QueueRef,
        policy: ScalingPolicy,
        client: AsyncClient,
        backend: Backend,
        metrics: OperatorMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref = ref
        self.policy = policy
        self.client = client
        self.backend = backend
        self.metrics = metrics
        self.clock = clock
        self.history = History()
        metrics.register_queue(str(ref))

    async def observe(self) -> tuple[Observation, QueueStats | None, str | None]:
        """Backlog and in-flight per priority, in one round trip."""
        queue = str(self.ref)
        started = self.clock()
        try:
            stats = await self.client.stats()
        except (ConnectionFailed, ConfigError, PermissionDenied) as exc:
            # Redis cannot be used: RedisReachable=False. Any other error (a script error
            # on a damaged key, say) escapes to the tick's handler: Scaling=False.
            self.metrics.reachable.labels(queue).set(0)
            return Observation(at=started, reachable=False), None, str(exc)
        self.metrics.probe.labels(queue).observe(self.clock() - started)
        self.metrics.reachable.labels(queue).set(1)
        self.metrics.observe_stats(queue, stats)
        waiting = {lv.name: lv.waiting for lv in stats.levels}
        return (
            Observation(
                at=started,
                waiting_by_priority=waiting,
                in_flight=stats.in_flight,
                paused=stats.paused,
                submitted=stats.counters.get("submitted", 0),
                claimed=stats.counters.get("claimed", 0),
            ),
            stats,
            None,
        )

    async def _leases_held(self) -> Counter[str] | None:
        """Tasks each worker holds a lease on now, by worker id; None if more are in flight
        than one scale-down should read (then every registered worker counts as busy).

        The registry's in-flight counts are as old as each worker's last heartbeat (a few
        seconds): a worker that claimed a long task since looks idle there. The leases are
        written by the claim itself; they are read from the fencing state alone (tens of
        bytes per task, whatever the tasks' payloads), at most the client's MAX_LEASES_READ."""
        held = await self.client.lease_holders()
        return None if held is None else Counter(held)

    async def _mark_idle_first(self) -> int | None:
        """Deletion costs from the tasks each worker runs: the idle go first. Returns how
        many (not draining) workers are busy; None if the registry is unread."""
        try:
            workers: list[WorkerInfo] = await self.client.workers()
            held = await self._leases_held()
        except KubeqError as exc:
            log.warning("%s: cannot read the worker registry (%s): no idle-first", self.ref, exc)
            return None
        running = {w.id: max(w.in_flight, held[w.id] if held is not None else 1) for w in workers}
        costs = deletion_cost_annotations({w.pod: running[w.id] for w in workers if w.pod})
        if costs:
            await self.backend.set_deletion_costs(self.ref, costs)
        # A worker that claimed before its first heartbeat registered it is busy too.
        unregistered = set(held or ()) - running.keys()
        return sum(1 for w in workers if running[w.id] > 0 and not w.draining) + len(unregistered)

    async def _record(self, current: int, decision: Decision, stats: QueueStats | None) -> None:
        """Keep the decision in the queue's capped scale log (the dashboard shows it).

        Best effort: a log that cannot be written never stops scaling.
        """
        event = {
            "at": stats.at if stats is not None else None,
            "from": current,
            "to": decision.replicas,
            "reason": decision.reason,
        }
        try:
            await self.client.record_scale(event)
        except KubeqError as exc:
            log.warning("%s: cannot record the scale decision (%s)", self.ref, exc)

    async def tick(self) -> Tick:
        queue = str(self.ref)
        # The pool first, then Redis: a decision made from this pair is applied only if no
        # other decision (another operator replica's) came after the pool was read, and
        # any decision before that read is already in what Redis shows now.
        view = await self.backend.view(self.ref)
        current = view.replicas
        observation, stats, error = await self.observe()
        decision = decide_replicas(observation, self.policy, self.history, current, self.clock())
        if decision.replicas < current:
            # The registry is read only before a scale-down: ticks stay one round trip.
            busy = await self._mark_idle_first()
            if busy is not None:
                decision = keep_busy(decision, current, busy, self.history)
        if decision.changed and not await self.backend.scale(
            self.ref, decision.replicas, basis=view.basis
        ):
            log.info("%s: not scaled to %d, a newer decision came first", queue, decision.replicas)
            decision = superseded(decision, current, self.history)
        self.history = decision.history
        if decision.changed:
            self.metrics.scale_events.labels(queue, decision.direction).inc()
            log.info("scaled %s %d → %d: %s", queue, current, decision.replicas, decision.reason)
            await self._record(current, decision, stats)
        self.metrics.desired.labels(queue).set(decision.replicas)
        self.metrics.current.labels(queue).set(view.ready)
        return Tick(decision, current, view.ready, stats, error)


def superseded(decision: Decision, current: int, before: History) -> Decision:
    """The decision not taken: the pool stays as read, and the scale time is not moved
    (the recommendations seen still count for the stabilization windows)."""
    history = replace(
        decision.history,
        last_scale_at=before.last_scale_at,
        last_scale_up_at=before.last_scale_up_at,
    )
    reason = f"superseded by a newer scale decision (wanted {decision.replicas})"
    return replace(decision, replicas=current, reason=reason, history=history, direction="none")
