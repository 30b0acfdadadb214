"""The leases a worker owns, and what each confirmed settle means for metrics and logs.

A lease is held from its claim until its settle is confirmed (or it is known lost), so
heartbeats keep extending the leases of finished tasks whose settle waits out an outage.
Outcomes are counted when Redis confirms them: a settle refused by fencing counts as
kubeq_settles_refused_total, never as a completion.
"""

from __future__ import annotations

import heapq
import logging

from kubeq.metrics import WorkerMetrics
from kubeq.protocol import system_clock
from kubeq.worker.batcher import HasSettlement
from kubeq.worker.execution import Outcome

tlog = logging.getLogger("kubeq.task")
MAX_RETRY_TIMES = 10_000


class Ledger:
    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._held: dict[str, tuple[str, int, int]] = {}
        self._settling: dict[str, int] = {}  # task id -> token of a settle not yet confirmed
        self._retry_due: list[int] = []  # heap: due times (ms) of retries we scheduled

    def hold(self, task_id: str, token: int, level_index: int) -> None:
        self._held[task_id] = (task_id, token, level_index)

    def drop(self, task_id: str, token: int) -> None:
        """Forget a lease, unless the task was re-claimed under a newer token since."""
        held = self._held.get(task_id)
        if held is not None and held[1] == token:
            del self._held[task_id]
        if self._settling.get(task_id) == token:
            del self._settling[task_id]

    def settling(self, task_id: str, token: int) -> None:
        """A settlement for this lease is queued or in flight."""
        self._settling[task_id] = token

    def is_settling(self, task_id: str, token: int) -> bool:
        return self._settling.get(task_id) == token

    def pending_settles(self) -> int:
        return len(self._settling)

    def held(self) -> list[tuple[str, int, int]]:
        return list(self._held.values())

    def idle_timeout(self, default: float, now_ms: int) -> float:
        """The idle block, cut short when a retry we scheduled comes due.

        A retry coming due pushes no wake-up; without this it would wait out the block.
        """
        due = self._retry_due
        while due and due[0] <= now_ms:
            heapq.heappop(due)
        return min(default, (due[0] - now_ms) / 1000 + 0.001) if due else default

    def settled(self, batch: list[HasSettlement], results: list[bool | None]) -> None:
        m = self.metrics
        now_ms = system_clock()
        debug = tlog.isEnabledFor(logging.DEBUG)
        for item, ok in zip(batch, results, strict=True):
            assert isinstance(item, Outcome)
            s = item.settlement
            self.drop(s.task_id, s.token)
            if ok is None:  # rejected outright: the lease expires and the reaper acts
                continue
            if not ok:
                m.settles_refused.inc()
                tlog.info(
                    "task %s: late %s refused, its lease was lost",
                    s.task_id,
                    item.event,
                    extra=self.fields(item, "refused"),
                )
                continue
            if item.event == "dead":
                m.dead_lettered(item.priority, item.task_type, item.reason)
            else:
                getattr(m.series(item.priority, item.task_type), item.event).inc()
            if item.event == "completed":
                if debug:
                    tlog.debug("task %s completed", s.task_id, extra=self.fields(item, "completed"))
                continue
            if item.event == "retried" and len(self._retry_due) < MAX_RETRY_TIMES:
                heapq.heappush(self._retry_due, now_ms + (item.retry_in_ms or 0))
            tlog.info(
                "task %s %s (%s)",
                s.task_id,
                item.event,
                item.reason or "-",
                extra=self.fields(item, item.event),
            )

    def fields(self, item: Outcome, event: str) -> dict[str, object]:
        return {
            "event": event,
            "queue": self.metrics.queue,
            "task_id": item.settlement.task_id,
            "type": item.task_type,
            "attempt": item.attempt,
            "reason": item.reason,
        }
