"""The key schema: every Redis key kubeq uses, in one place.

All keys of one queue share the hash tag `{namespace/queue}`, so every script touches a
single Redis Cluster slot while different queues spread over slots. The `v1` segment
versions the layout: a change to it gets a new prefix, never a silent reinterpretation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from kubeq.protocol.config import check_name

SCHEMA_VERSION = "v1"
ROOT = "kubeq"


@dataclass(frozen=True)
class QueueKeys:
    namespace: str
    queue: str

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)
        check_name("queue name", self.queue)

    @cached_property
    def prefix(self) -> str:
        return f"{ROOT}:{SCHEMA_VERSION}:{{{self.namespace}/{self.queue}}}:"

    # One list of ready task ids per priority level (FIFO: RPUSH, LPOP).
    def ready(self, level: str) -> str:
        return f"{self.prefix}ready:{level}"

    # Tasks not yet due (ETA or retry backoff), a sorted set per level scored by due ms.
    def delayed(self, level: str) -> str:
        return f"{self.prefix}delayed:{level}"

    # Running tasks, a sorted set per level scored by lease deadline ms.
    def leases(self, level: str) -> str:
        return f"{self.prefix}leases:{level}"

    @cached_property
    def tasks(self) -> str:
        """HASH id -> task record JSON, for every non-terminal and dead-lettered task."""
        return f"{self.prefix}tasks"

    @cached_property
    def meta(self) -> str:
        """HASH id -> "<level>|<max attempts>|<enqueued ms>[|<seq>]", written by submit.

        What scripts need of a task, in a form Lua splits without decoding user data: no
        script ever decodes a task record, so no record can make a script fail midway.
        """
        return f"{self.prefix}meta"

    @cached_property
    def seq(self) -> str:
        """Counter numbering submitted tasks: FIFO among tasks due in the same ms."""
        return f"{self.prefix}seq"

    def claims(self, worker: str) -> str:
        """HASH of one worker's last claim: its claim id and what each chunk leased.

        Lives as long as a lease, so a claim retried after a lost reply returns the same
        tasks instead of charging new attempts.
        """
        return f"{self.prefix}claims:{worker}"

    @cached_property
    def progress(self) -> str:
        """HASH id -> '{"at": ms, "value": ...}': the running attempt's latest progress.

        Written only by the lease holder (fenced), deleted by settle and reap with the lease.
        """
        return f"{self.prefix}progress"

    @cached_property
    def attempts(self) -> str:
        """HASH id -> attempts charged so far."""
        return f"{self.prefix}attempts"

    @cached_property
    def holders(self) -> str:
        """HASH id -> "token|worker|started_ms" while leased: the fencing state."""
        return f"{self.prefix}holders"

    @cached_property
    def fence(self) -> str:
        """Counter handing out fencing tokens; monotonic for the queue's lifetime."""
        return f"{self.prefix}fence"

    @cached_property
    def dead(self) -> str:
        """ZSET id -> dead-lettered at ms."""
        return f"{self.prefix}dead"

    @cached_property
    def dead_info(self) -> str:
        """HASH id -> outcome JSON (reason, error) of dead-lettered tasks."""
        return f"{self.prefix}dead_info"

    @cached_property
    def cancelled(self) -> str:
        """SET of running task ids whose cancellation waits for the next heartbeat."""
        return f"{self.prefix}cancel"

    @cached_property
    def results(self) -> str:
        """HASH id -> terminal record {"task":..., "outcome":...} (completed, cancelled)."""
        return f"{self.prefix}results"

    @cached_property
    def results_expiry(self) -> str:
        """ZSET id -> ms when its terminal record expires (the result TTL).

        One hash plus an expiry index instead of a key per result: a settle of a batch
        writes two commands, not one per task, and every key stays declared up front.
        """
        return f"{self.prefix}results_expiry"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}idem:{key}"

    @cached_property
    def wake(self) -> str:
        """Bounded list pushed by submit so idle workers block instead of polling."""
        return f"{self.prefix}wake"

    @cached_property
    def done_channel(self) -> str:
        """Pub/sub channel announcing ids that reached a terminal state."""
        return f"{self.prefix}done"

    @cached_property
    def workers(self) -> str:
        """ZSET worker id -> last heartbeat ms."""
        return f"{self.prefix}workers"

    @cached_property
    def worker_info(self) -> str:
        """HASH worker id -> JSON (pod, in-flight count, started, concurrency)."""
        return f"{self.prefix}worker_info"

    @cached_property
    def counters(self) -> str:
        """HASH of cumulative totals (submitted, completed, retried, dead, ...)."""
        return f"{self.prefix}counters"

    @cached_property
    def config(self) -> str:
        """The published QueueConfig JSON."""
        return f"{self.prefix}config"

    @cached_property
    def type_counters(self) -> str:
        """HASH "<task type>|<counter>" -> total (submitted, completed, failed, ...);
        at most 1,000 fields, the rest counted under "(other)"."""
        return f"{self.prefix}type_counters"

    @cached_property
    def paused(self) -> str:
        """STRING set while the queue is paused (JSON: when, why): claims take nothing."""
        return f"{self.prefix}paused"

    @cached_property
    def scale_log(self) -> str:
        """Capped LIST of recent scale decisions (JSON), newest first, for the dashboard."""
        return f"{self.prefix}scale_log"

    @cached_property
    def maintenance_lock(self) -> str:
        return f"{self.prefix}lock:maintenance"

    @cached_property
    def rate_bucket(self) -> str:
        return f"{self.prefix}rate"

    @cached_property
    def flow(self) -> str:
        """HASH step id -> "<workflow>|<level index>|<inputs>|<successor>/<input> ..."."""
        return f"{self.prefix}flow"

    @cached_property
    def flow_wait(self) -> str:
        """HASH waiting step -> inputs still missing; "<step>/<i>" -> input i received."""
        return f"{self.prefix}flow_wait"

    @cached_property
    def flows(self) -> str:
        """HASH workflow -> "<state>|<steps left>|<on-failure step>"; "<wf>/steps" -> ids."""
        return f"{self.prefix}flows"

    @cached_property
    def flows_expiry(self) -> str:
        """ZSET workflow -> ms when the state of the ended workflow may be dropped."""
        return f"{self.prefix}flows_expiry"

    @cached_property
    def flow_keys(self) -> tuple[str, str, str, str]:
        """The four workflow keys, in the order settle, reap and cancel take them."""
        return (self.flow, self.flow_wait, self.flows, self.flows_expiry)

    @cached_property
    def schedules(self) -> str:
        """HASH schedule name -> JSON of its last tick, last task id and next run."""
        return f"{self.prefix}schedules"

    def all_static(self, levels: tuple[str, ...]) -> list[str]:
        """Every key whose name does not depend on a task id or idempotency key."""
        per_level = [
            k for lv in levels for k in (self.ready(lv), self.delayed(lv), self.leases(lv))
        ]
        return [
            *per_level,
            self.tasks,
            self.meta,
            self.seq,
            self.attempts,
            self.holders,
            self.fence,
            self.dead,
            self.dead_info,
            self.results,
            self.results_expiry,
            self.cancelled,
            self.wake,
            self.workers,
            self.worker_info,
            self.counters,
            self.config,
            self.maintenance_lock,
            self.rate_bucket,
            self.paused,
            self.scale_log,
            self.type_counters,
            *self.flow_keys,
            self.schedules,
            self.progress,
        ]
