"""Worker metrics on an explicit registry, built per process (never at import).

Labels are bounded: queue ("namespace/name"), priority (the queue's levels) and task type
(registered types only; anything else is "unknown"). Never pod or task id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DEAD_REASONS = frozenset(
    {
        "permanent_error",
        "attempts_exhausted",
        "unknown_task_type",
        "invalid_payload",
        "malformed_record",
        "result_not_json",
        "timeout",
        "result_too_large",
        "outcome_error",
        "worker_error",
    }
)
UNKNOWN = "unknown"
_TASK = ("queue", "priority", "task_type")
# Dense between 0.1 and 10 s, where most handlers and queue waits live: a quantile is
# interpolated inside one bucket, so a bucket 1-5 s wide puts p50 anywhere within it.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5, 10, 15, 20, 30, 60, 120, 300, 600,
)  # fmt: skip
WAIT_BUCKETS = (*DURATION_BUCKETS, 900, 3600)


class TaskSeries:
    """Pre-resolved children for one (priority, task type): `.labels()` is slow per task."""

    __slots__ = (
        "cancelled",
        "claimed",
        "completed",
        "duration",
        "failed",
        "released",
        "retried",
        "wait",
    )

    def __init__(self, m: WorkerMetrics, priority: str, task_type: str) -> None:
        lv = (m.queue, priority, task_type)
        self.claimed = m.claimed.labels(*lv)
        self.completed = m.completed.labels(*lv)
        self.failed = m.failed.labels(*lv)
        self.retried = m.retried.labels(*lv)
        self.cancelled = m.cancelled.labels(*lv)
        self.released = m.released.labels(*lv)
        self.duration = m.duration.labels(*lv)
        self.wait = m.queue_wait.labels(m.queue, priority)


class Families:
    """The metric families of one registry, shared by the queues a worker process serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()

        def counter(name: str, doc: str, labels: tuple[str, ...] = _TASK) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self.claimed = counter("kubeq_tasks_claimed_total", "Tasks claimed by this worker")
        self.completed = counter("kubeq_tasks_completed_total", "Tasks completed successfully")
        self.failed = counter(
            "kubeq_tasks_failed_total",
            "Failed attempts: the handler raised, timed out or crashed, or its input or "
            "result was refused",
        )
        self.retried = counter("kubeq_tasks_retried_total", "Tasks scheduled for another attempt")
        self.dead = counter(
            "kubeq_tasks_dead_lettered_total", "Tasks moved to the dead letters", (*_TASK, "reason")
        )
        self.cancelled = counter("kubeq_tasks_cancelled_total", "Running tasks cancelled")
        self.released = counter(
            "kubeq_tasks_released_total", "Tasks handed back unfinished (drain)"
        )
        self.duration = Histogram(
            "kubeq_task_duration_seconds",
            "Handler run time",
            _TASK,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "kubeq_task_queue_wait_seconds",
            "Time from due to claimed",
            ("queue", "priority"),
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        q = ("queue",)
        self.in_flight = Gauge("kubeq_tasks_in_flight", "Handlers running now", q, registry=r)
        self.concurrency = Gauge(
            "kubeq_worker_concurrency", "Task slots of this worker", q, registry=r
        )
        self.leases_lost = counter(
            "kubeq_leases_lost_total", "Leases lost while the handler ran", q
        )
        self.settles_refused = counter(
            "kubeq_settles_refused_total", "Late settles refused by fencing", q
        )
        self.redis_errors = counter("kubeq_redis_errors_total", "Failed Redis calls", q)
        self.draining = Gauge("kubeq_worker_draining", "1 while draining", q, registry=r)
        self.eviction_policy_safe = Gauge(
            "kubeq_redis_eviction_policy_safe",
            "1 when Redis runs maxmemory-policy noeviction; 0 when it may evict accepted tasks",
            q,
            registry=r,
        )

    def expose(self) -> bytes:
        from prometheus_client import generate_latest

        out: Any = generate_latest(self.registry)
        return bytes(out)


class WorkerMetrics:
    """One queue's view of the families: `queue` is bound into every series."""

    def __init__(
        self,
        queue: str,
        known_types: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
        *,
        families: Families | None = None,
    ) -> None:
        self.queue = queue
        self.known_types = frozenset(known_types)
        # Label values come only from the queue's config and the app's registry, never from
        # a task record (any producer writes those): `prime` names the priority levels.
        self.known_priorities: frozenset[str] = frozenset()
        f = self.families = families or Families(registry)
        self.registry = f.registry
        self.claimed, self.completed, self.failed = f.claimed, f.completed, f.failed
        self.retried, self.dead, self.cancelled = f.retried, f.dead, f.cancelled
        self.released, self.duration, self.queue_wait = f.released, f.duration, f.queue_wait
        self.in_flight = f.in_flight.labels(queue)
        self.concurrency = f.concurrency.labels(queue)
        self.leases_lost = f.leases_lost.labels(queue)
        self.settles_refused = f.settles_refused.labels(queue)
        self.redis_errors = f.redis_errors.labels(queue)
        self.draining = f.draining.labels(queue)
        self.eviction_policy_safe = f.eviction_policy_safe.labels(queue)
        self._series: dict[tuple[str, str], TaskSeries] = {}

    def task_type(self, task_type: str) -> str:
        return task_type if task_type in self.known_types else UNKNOWN

    def priority(self, priority: str) -> str:
        return priority if priority in self.known_priorities else UNKNOWN

    def series(self, priority: str, task_type: str) -> TaskSeries:
        key = (self.priority(priority), self.task_type(task_type))  # bounded, as the labels
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = TaskSeries(self, *key)
        return s

    def prime(self, priorities: Iterable[str]) -> None:
        """Create every (priority, registered type) series at zero before any task runs.

        The label sets are bounded (levels x registered types x dead-letter reasons), and
        a series that exists from the start lets rate() and alerts see its first event.
        """
        self.known_priorities |= frozenset(priorities)
        for priority in self.known_priorities:
            for task_type in self.known_types:
                self.series(priority, task_type)
                for reason in DEAD_REASONS:
                    self.dead.labels(self.queue, priority, task_type, reason)

    def dead_lettered(self, priority: str, task_type: str, reason: str | None) -> None:
        label = reason if reason in DEAD_REASONS else "permanent_error"
        labels = (self.queue, self.priority(priority), self.task_type(task_type), label)
        self.dead.labels(*labels).inc()

    def expose(self) -> bytes:
        return self.families.expose()
