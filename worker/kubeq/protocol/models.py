"""The task model and the small records the protocol exchanges."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class TaskStatus(StrEnum):
    PENDING = "pending"  # in a ready list
    SCHEDULED = "scheduled"  # delayed until its ETA, never run yet
    RUNNING = "running"  # leased by a worker
    RETRYING = "retrying"  # failed, waiting for its backoff to elapse
    COMPLETED = "completed"
    DEAD = "dead"  # in the dead-letter set
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.DEAD, TaskStatus.CANCELLED)


class TaskError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    message: str
    traceback: str | None = None


class TaskProgress(BaseModel):
    """The latest `ctx.progress` value of a running attempt, and when it was stored (ms)."""

    model_config = ConfigDict(extra="ignore")

    value: Any = None
    at: int


class Task(BaseModel):
    """A task as the protocol sees it. Times are Unix epoch milliseconds."""

    model_config = ConfigDict(extra="ignore")

    id: str
    queue: str
    type: str
    payload: Any = None
    priority: str
    attempts: int = 0
    max_attempts: int
    status: TaskStatus = TaskStatus.PENDING
    created_at: int
    due_at: int
    started_at: int | None = None
    finished_at: int | None = None
    worker: str | None = None
    error: TaskError | None = None
    reason: str | None = None
    idempotency_key: str | None = None
    #: string metadata given at submit (e.g. the W3C trace context of kubeq.otel)
    headers: dict[str, str] | None = None
    result: Any = None
    cancel_requested: bool = False
    #: fencing token of the current lease (claimed tasks only)
    token: int | None = None
    #: the workflow this task is a step of
    workflow: str | None = None
    #: how a workflow step's payload comes from its inputs: "result", "results", "outcome"
    feed: str | None = None
    #: the outcomes of the steps this step waited for, in declaration order
    inputs: list[Any] | None = None
    #: the running attempt's latest `ctx.progress` report (None when none was stored)
    progress: TaskProgress | None = None


@dataclass(slots=True)
class ClaimedTask:
    """What a claim hands to a worker: the task plus its lease's fencing token.

    A plain dataclass, not a model: one is built per claimed task, and its parts are
    validated already (the task by `Task`, the numbers by the claim's parser). Not frozen
    either (a frozen __init__ sets each field through object.__setattr__); never changed."""

    task: Task
    token: int
    level_index: int  # 1-based index of the task's level in the queue's level order

    @property
    def id(self) -> str:
        return self.task.id


class LevelStats(BaseModel):
    name: str
    ready: int
    delayed: int  # not yet due
    due: int  # due but not yet promoted to ready
    in_flight: int
    oldest_enqueued_at: int | None  # ms; None when nothing waits

    @property
    def waiting(self) -> int:
        """Tasks waiting for a worker: ready plus due (delayed tasks whose time has come)."""
        return self.ready + self.due

    @property
    def backlog(self) -> int:
        """What the autoscaler counts: work waiting or running now (waiting + in flight)."""
        return self.waiting + self.in_flight


class QueueStats(BaseModel):
    queue: str
    at: int
    levels: list[LevelStats]
    dead: int
    workers: int
    counters: dict[str, int]
    #: claims take nothing while paused (`Client.pause`); running tasks finish
    paused: bool = False
    paused_at: int | None = None  # ms (Redis clock)
    paused_reason: str | None = None

    @property
    def ready(self) -> int:
        """Ready plus due over all levels: the same as `waiting` (kept for callers)."""
        return self.waiting

    @property
    def waiting(self) -> int:
        return sum(lv.waiting for lv in self.levels)

    @property
    def in_flight(self) -> int:
        return sum(lv.in_flight for lv in self.levels)

    @property
    def delayed(self) -> int:
        return sum(lv.delayed for lv in self.levels)

    @property
    def backlog(self) -> int:
        return sum(lv.backlog for lv in self.levels)

    def oldest_age_seconds(self) -> float:
        ages = [self.at - lv.oldest_enqueued_at for lv in self.levels if lv.oldest_enqueued_at]
        # Enqueue times come from producers' clocks: never report a negative age.
        return max(max(ages, default=0), 0) / 1000.0


class WorkerInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    pod: str | None = None
    host: str | None = None
    pid: int | None = None
    in_flight: int = 0
    concurrency: int = 0
    started_at: int | None = None
    draining: bool = False
    last_seen: int = 0


class HeartbeatReply(BaseModel):
    lost: list[str]
    cancelled: list[str]


class ReapReport(BaseModel):
    requeued: list[str]
    dead: list[str]
    cancelled: list[str]
    results_expired: int = 0


class DeadLetter(BaseModel):
    task: Task
    dead_at: int


class TaskPage(BaseModel):
    """One page of `Client.list_tasks`: the tasks, and the cursor of the next page."""

    tasks: list[Task]
    #: pass it back to continue; None when the listing reached its end
    cursor: str | None = None
    #: entries of the queue's structures read for this page (bounded per call)
    scanned: int = 0
