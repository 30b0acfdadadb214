"""Every operator metric, on an explicit registry built per process (never at import).

Labels are bounded: queue ("namespace/name"), priority, state, direction.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubeq.protocol import QueueStats


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.waiting = Gauge(
            "kubeq_queue_waiting_tasks",
            "Tasks waiting for a worker: ready + due, per priority.",
            ["queue", "priority"],
            registry=r,
        )
        self.backlog = Gauge(
            "kubeq_queue_backlog_tasks",
            "Tasks the autoscaler counts: waiting (ready + due) + in flight, per priority.",
            ["queue", "priority"],
            registry=r,
        )
        self.tasks = Gauge(
            "kubeq_queue_tasks",
            "Tasks by priority and state (ready, due, delayed, in_flight).",
            ["queue", "priority", "state"],
            registry=r,
        )
        self.paused = Gauge(
            "kubeq_queue_paused",
            "1 while the queue is paused (`kubeq pause`): workers claim nothing.",
            ["queue"],
            registry=r,
        )
        self.dead = Gauge(
            "kubeq_queue_dead_letter_tasks", "Tasks in the dead-letter set.", ["queue"], registry=r
        )
        self.oldest = Gauge(
            "kubeq_queue_oldest_task_age_seconds",
            "How long the oldest waiting task has waited.",
            ["queue"],
            registry=r,
        )
        self.desired = Gauge(
            "kubeq_replicas_desired", "Workers the autoscaler wants.", ["queue"], registry=r
        )
        self.current = Gauge(
            "kubeq_replicas_current", "Workers running and ready.", ["queue"], registry=r
        )
        self.scale_events = Counter(
            "kubeq_scale_events_total",
            "Replica changes made by the autoscaler.",
            ["queue", "direction"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "kubeq_reconcile_errors_total",
            "Failed reconciles and autoscaler ticks.",
            ["queue"],
            registry=r,
        )
        self.probe = Histogram(
            "kubeq_redis_probe_duration_seconds",
            "Time to read a queue's backlog from Redis.",
            ["queue"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.reachable = Gauge(
            "kubeq_redis_reachable",
            "1 when the last backlog read succeeded.",
            ["queue"],
            registry=r,
        )
        self.eviction_policy_safe = Gauge(
            "kubeq_redis_eviction_policy_safe",
            "1 when the queue's Redis runs maxmemory-policy noeviction; 0 when it may evict "
            "accepted tasks (checked at each reconcile).",
            ["queue"],
            registry=r,
        )

        self.submitted = Counter(
            "kubeq_queue_submitted",
            "Tasks submitted to the queue (workflow steps included; idempotent repeats not), "
            "read from Redis's own counter: rate() of it is the submit rate.",
            ["queue"],
            registry=r,
        )
        self._submitted_seen: dict[str, int] = {}

        self.schedule_ticks = Counter(
            "kubeq_schedule_ticks_total",
            "Schedule ticks by outcome: fired (a task submitted) or skipped (missed, "
            "suspended, or folded into one run).",
            ["queue", "schedule", "outcome"],
            registry=r,
        )

    def observe_schedules(self, queue: str, fired: dict[str, int], skipped: dict[str, int]) -> None:
        for name, n in fired.items():
            self.schedule_ticks.labels(queue, name, "fired").inc(n)
        for name, n in skipped.items():
            self.schedule_ticks.labels(queue, name, "skipped").inc(n)

    def register_queue(self, queue: str) -> None:
        """Create the queue's counters at zero, so rates and alerts see them before any event."""
        self.reconcile_errors.labels(queue)
        for direction in ("up", "down"):
            self.scale_events.labels(queue, direction)

    def observe_stats(self, queue: str, stats: QueueStats) -> None:
        for lv in stats.levels:
            self.waiting.labels(queue, lv.name).set(lv.waiting)
            self.backlog.labels(queue, lv.name).set(lv.backlog)
            for state, value in (
                ("ready", lv.ready),
                ("due", lv.due),
                ("delayed", lv.delayed),
                ("in_flight", lv.in_flight),
            ):
                self.tasks.labels(queue, lv.name, state).set(value)
        self.dead.labels(queue).set(stats.dead)
        self.paused.labels(queue).set(1 if stats.paused else 0)
        self.oldest.labels(queue).set(stats.oldest_age_seconds())
        self._follow_submitted(queue, stats.counters.get("submitted", 0))

    def _follow_submitted(self, queue: str, total: int) -> None:
        """Make the series equal Redis's counter. A Prometheus counter only adds, so it
        adds what Redis added since the last read; a total that went down (the queue's
        keys were deleted and it started over) restarts the series at that total, which
        rate() reads as the counter reset it is."""
        last = self._submitted_seen.get(queue)
        if last is None or total < last:
            _remove(self.submitted, queue)
            self.submitted.labels(queue).inc(total)
        else:
            self.submitted.labels(queue).inc(total - last)
        self._submitted_seen[queue] = total

    def gauges(self) -> tuple[Gauge, ...]:
        """The series that state a current value (a counter only ever adds up)."""
        return (
            self.waiting,
            self.backlog,
            self.tasks,
            self.dead,
            self.paused,
            self.oldest,
            self.desired,
            self.current,
            self.reachable,
            self.eviction_policy_safe,
        )

    def clear_queue(self, queue: str) -> None:
        """Drop every gauge series of a queue this process no longer watches (a replica
        paused by peering, a daemon stopped): dashboards `sum` the replicas' series, so a
        frozen copy would count the queue twice."""
        for gauge in self.gauges():
            for family in gauge.collect():
                for sample in family.samples:
                    if sample.labels.get("queue") == queue:
                        _remove(gauge, *sample.labels.values())
        # Redis's total, not this process's count: only the watching replica exports it.
        _remove(self.submitted, queue)
        self._submitted_seen.pop(queue, None)

    def forget(self, queue: str, levels: tuple[str, ...]) -> None:
        """Drop a deleted queue's series so dashboards do not show it frozen."""
        for metric in (
            self.dead,
            self.paused,
            self.oldest,
            self.desired,
            self.current,
            self.reachable,
            self.eviction_policy_safe,
            self.reconcile_errors,
            self.probe,
            self.submitted,
        ):
            _remove(metric, queue)
        self._submitted_seen.pop(queue, None)
        for direction in ("up", "down"):
            _remove(self.scale_events, queue, direction)
        for lv in levels:
            _remove(self.waiting, queue, lv)
            _remove(self.backlog, queue, lv)
            for state in ("ready", "due", "delayed", "in_flight"):
                _remove(self.tasks, queue, lv, state)


def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
