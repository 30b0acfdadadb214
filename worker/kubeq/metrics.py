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
    }
)
UNKNOWN = "unknown"
_TASK = ("queue", "priority", "task_type")
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


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


class WorkerMetrics:
    def __init__(
        self, queue: str, known_types: Iterable[str] = (), registry: CollectorRegistry | None = None
    ) -> None:
        self.queue = queue
        self.known_types = frozenset(known_types)
        # Label values come only from the queue's config and the app's registry, never from
        # a task record (any producer writes those): `prime` names the priority levels.
        self.known_priorities: frozenset[str] = frozenset()
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = _TASK) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self.claimed = counter("kubeq_tasks_claimed_total", "Tasks claimed by this worker")
        self.completed = counter("kubeq_tasks_completed_total", "Tasks completed successfully")
        self.failed = counter("kubeq_tasks_failed_total", "Handler attempts that raised")
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
        self.in_flight = Gauge(
            "kubeq_tasks_in_flight", "Handlers running now", q, registry=r
        ).labels(queue)
        self.concurrency = Gauge(
            "kubeq_worker_concurrency", "Task slots of this worker", q, registry=r
        ).labels(queue)
        self.leases_lost = counter(
            "kubeq_leases_lost_total", "Leases lost while the handler ran", q
        ).labels(queue)
        self.settles_refused = counter(
            "kubeq_settles_refused_total", "Late settles refused by fencing", q
        ).labels(queue)
        self.redis_errors = counter("kubeq_redis_errors_total", "Failed Redis calls", q).labels(
            queue
        )
        self.draining = Gauge("kubeq_worker_draining", "1 while draining", q, registry=r).labels(
            queue
        )
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
        from prometheus_client import generate_latest

        out: Any = generate_latest(self.registry)
        return bytes(out)
