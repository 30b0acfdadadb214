"""The protocol's operations, written once for both clients, without I/O.

Each operation is a generator: it yields `Request`s (a script call, a command or a
pipeline of commands), receives each reply, and returns the result. `Client` drives it
with blocking calls and `AsyncClient` with awaits, so keys, arguments and parsing exist
exactly once. `now` always comes from the caller.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from pydantic import ValidationError

from kubeq.protocol import errors
from kubeq.protocol.backoff import retry_delay_ms
from kubeq.protocol.config import QueueConfig
from kubeq.protocol.keys import QueueKeys
from kubeq.protocol.models import (
    ClaimedTask,
    DeadLetter,
    HeartbeatReply,
    LevelStats,
    QueueStats,
    ReapReport,
    Task,
    TaskError,
    TaskStatus,
    WorkerInfo,
)

MAX_TYPE_LENGTH = 200
MAX_ATTEMPTS = 1000  # QueueConfig's and the CRD's cap on retry.maxAttempts
MAX_DELAY_SECONDS = 1000 * 365 * 86400  # far beyond any retention; within datetime
# The safe pattern of task types (docs/security.md): no spaces, control characters or
# markup, so a type can never forge a log line or colour a terminal.
TASK_TYPE_PATTERN = rf"^[A-Za-z0-9_][A-Za-z0-9_.:/@+-]{{0,{MAX_TYPE_LENGTH - 1}}}$"
TASK_TYPE_RE = re.compile(TASK_TYPE_PATTERN)
_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_IDEMPOTENCY_KEY_LENGTH = 256
DEFAULT_CHUNK = 1000
WAKE_CAP = 64
PROMOTE_LIMIT = 1000
WORKER_TTL_FACTOR = 3  # a worker silent for 3 leases is deregistered


@dataclass(frozen=True)
class ScriptCall:
    script: str
    keys: Sequence[str]
    args: Sequence[str | int | float]


@dataclass(frozen=True)
class Command:
    args: tuple[str | int | float, ...]


@dataclass(frozen=True)
class Pipeline:
    commands: tuple[Command, ...]


Request: TypeAlias = ScriptCall | Command | Pipeline
Op: TypeAlias = Generator[Request, Any, Any]

SettleAction = Literal["complete", "cancel", "retry", "dead", "release"]


@dataclass(frozen=True)
class TaskRequest:
    """One task to submit; `submit_many` takes these (or dicts of the same fields)."""

    type: str
    payload: Any = None
    priority: str | None = None
    delay: float | None = None  # seconds from now
    eta_ms: int | None = None  # absolute due time, epoch ms
    idempotency_key: str | None = None
    max_attempts: int | None = None
    id: str | None = None


@dataclass(frozen=True)
class Settlement:
    """How one leased task ends: see settle.lua for the actions."""

    task_id: str
    token: int
    level_index: int
    action: SettleAction
    outcome: str = "{}"  # JSON
    due_ms: int = 0


@dataclass(frozen=True)
class MalformedClaim:
    """A claimed id whose stored record does not parse; the worker dead-letters it."""

    task_id: str
    token: int
    level_index: int
    attempts: int
    error: str


@dataclass(frozen=True)
class Claim:
    tasks: list[ClaimedTask]
    malformed: list[MalformedClaim] = field(default_factory=list)
    #: > 0 when the queue's rate limit held tasks back: ms until a token is due
    rate_wait_ms: int = 0


def new_task_id() -> str:
    """128 random bits as 32 hex digits (the shape of uuid4().hex, at a fifth of the cost)."""
    return os.urandom(16).hex()


@functools.lru_cache(maxsize=1024)
def _quoted(text: str) -> str:
    """JSON string literal of a task type: a handful of distinct values, encoded once."""
    return _dumps(text)


# One encoder instance: json.dumps() with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_dumps = _ENCODER.encode


class QueueOps:
    """Builds every operation for one queue. Pure: no connection, no clock."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self.keys = QueueKeys(config.namespace, config.name)
        self.levels = config.level_names
        self._level_index = {name: i + 1 for i, name in enumerate(self.levels)}
        k = self.keys
        self._ready = [k.ready(lv) for lv in self.levels]
        self._delayed = [k.delayed(lv) for lv in self.levels]
        self._leases = [k.leases(lv) for lv in self.levels]
        self._per_level3 = [x for i in range(len(self.levels)) for x in self._level_keys3(i)]
        self._weights = [p.weight for p in config.priorities]
        self._record_head = f'","queue":{_dumps(config.full_name)},"type":'

    def _level_keys3(self, i: int) -> tuple[str, str, str]:
        return self._ready[i], self._delayed[i], self._leases[i]

    def level_index(self, priority: str | None) -> int:
        name = priority if priority is not None else self.config.default_level
        try:
            return self._level_index[name]
        except KeyError:
            raise errors.UnknownPriority(
                f"unknown priority {name!r} for queue {self.config.full_name}; "
                f"levels are {', '.join(self.levels)}"
            ) from None

    # -- submit ------------------------------------------------------------------------

    def encode_task(self, req: TaskRequest, now: int) -> tuple[str, int, int, str | None, str]:
        """Validate one request; return (id, level index, due ms, idempotency key, record)."""
        if not isinstance(req.type, str) or not TASK_TYPE_RE.match(req.type):
            raise errors.InvalidTask(
                f"task type must be 1-{MAX_TYPE_LENGTH} characters of A-Z a-z 0-9 and _.:/@+- "
                "(it reaches logs, terminals and metric labels)"
            )
        level = self.level_index(req.priority)
        try:
            payload = _dumps(req.payload)
        except (TypeError, ValueError) as exc:
            raise errors.PayloadNotJSON(
                f"payload of a {req.type!r} task is not JSON: {exc}"
            ) from None
        size = len(payload.encode()) if len(payload) * 4 > self.config.max_payload_bytes else 0
        if size > self.config.max_payload_bytes:
            raise errors.PayloadTooLarge(
                f"payload of a {req.type!r} task is {size} bytes; the limit of queue "
                f"{self.config.full_name} is {self.config.max_payload_bytes} bytes"
            )
        if req.delay is not None and req.delay < 0:
            raise errors.InvalidTask(f"delay must not be negative, got {req.delay}")
        # Bounds (issue 16 item 7; the protocol's own type checks may supersede these).
        if req.delay is not None and not (
            isinstance(req.delay, int | float) and req.delay <= MAX_DELAY_SECONDS
        ):
            raise errors.InvalidTask(
                f"delay must be a number of seconds up to {MAX_DELAY_SECONDS} (1000 years)"
            )
        if req.eta_ms is not None and not (
            isinstance(req.eta_ms, int) and req.eta_ms <= now + MAX_DELAY_SECONDS * 1000
        ):
            raise errors.InvalidTask("eta must be an integer of ms at most 1000 years from now")
        due = now
        if req.eta_ms is not None:
            due = max(now, int(req.eta_ms))
        elif req.delay:
            due = now + int(req.delay * 1000)
        key = req.idempotency_key
        if key is not None and (not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH):
            raise errors.InvalidTask(
                f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            )
        max_attempts = (
            req.max_attempts if req.max_attempts is not None else self.config.max_attempts
        )
        if (
            not isinstance(max_attempts, int)
            or isinstance(max_attempts, bool)
            or not 1 <= max_attempts <= MAX_ATTEMPTS
        ):
            raise errors.InvalidTask(
                f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS} (the queue's cap)"
            )
        if req.id is None:
            task_id = new_task_id()
        elif _ID_RE.match(req.id):
            task_id = req.id
        else:
            raise errors.InvalidTask(f"task id {req.id!r} must be 1-128 of [A-Za-z0-9._:-]")
        # Built by hand around the already-encoded payload: encoding it twice would double
        # the cost of the hot path.
        quoted_key = "null" if key is None else _dumps(key)
        record = (
            f'{{"id":"{task_id}{self._record_head}{_quoted(req.type)},'
            f'"priority":"{self.levels[level - 1]}","max_attempts":{max_attempts},'
            f'"created_at":{now},"due_at":{due},"idempotency_key":{quoted_key},'
            f'"payload":{payload}}}'
        )
        return task_id, level, due, key, record

    def submit_many(
        self, requests: Iterable[TaskRequest], now: int, chunk_size: int = DEFAULT_CHUNK
    ) -> Op:
        encoded = [self.encode_task(r, now) for r in requests]  # validate all before writing
        accepted: list[str] = []
        for start in range(0, len(encoded), chunk_size):
            call = self._submit_chunk(encoded[start : start + chunk_size], now)
            try:
                ids = yield call
            except errors.QueueFull as exc:
                raise errors.QueueFull(str(exc), accepted=accepted) from None
            accepted.extend(ids)
        return accepted

    def _submit_chunk(
        self, chunk: Sequence[tuple[str, int, int, str | None, str]], now: int
    ) -> ScriptCall:
        k = self.keys
        idem_keys: list[str] = []
        args: list[str | int | float] = [
            now,
            self.config.max_backlog or 0,
            WAKE_CAP,
            self.config.idempotency_ttl_seconds * 1000,
            len(self.levels),
            len(chunk),
        ]
        for task_id, level, due, key, record in chunk:
            idem = 0
            if key is not None:
                idem_keys.append(k.idempotency(key))
                idem = len(idem_keys)
            args += [task_id, level, due if due > now else 0, idem, record]
        keys = [k.tasks, k.wake, k.counters, *self._ready, *self._delayed, *idem_keys]
        return ScriptCall("submit", keys, args)

    # -- claim -------------------------------------------------------------------------

    def serving_order(self, rng: random.Random) -> list[int]:
        """0-based level indexes in the order a claim serves them.

        Strict: always highest first. Weighted: a weighted random permutation, so every
        level leads with probability weight/total and none starves under load.
        """
        order = list(range(len(self.levels)))
        if self.config.mode == "strict" or len(order) == 1:
            return order
        # Efraimidis-Spirakis: sort by u**(1/w), a weighted sample without replacement.
        return sorted(order, key=lambda i: rng.random() ** (1.0 / self._weights[i]), reverse=True)

    def claim(
        self, worker: str, n: int, now: int, order: Sequence[int], lease_ms: int | None = None
    ) -> Op:
        k = self.keys
        rate = self.config.rate_limit
        keys = [k.tasks, k.attempts, k.holders, k.fence, k.counters, k.rate_bucket, k.wake]
        for i in order:
            keys += self._level_keys3(i)
        lease = lease_ms if lease_ms is not None else int(self.config.lease_seconds * 1000)
        args: list[str | int | float] = [
            now,
            n,
            worker,
            lease,
            len(order),
            PROMOTE_LIMIT,
            repr(rate.per_second / 1000.0) if rate else 0,
            rate.burst if rate else 0,
            *[i + 1 for i in order],
        ]
        reply = yield ScriptCall("claim", keys, args)
        return self.parse_claim(reply, worker, now)

    def parse_claim(self, reply: list[Any], worker: str, now: int) -> Claim:
        tasks: list[ClaimedTask] = []
        malformed: list[MalformedClaim] = []
        for item in reply[1:]:
            level_s, token_s, attempts_s, task_id, record = item.split(" ", 4)
            level, token, attempts = int(level_s), int(token_s), int(attempts_s)
            data: Any = None
            try:
                data = json.loads(record)
                data.update(
                    attempts=attempts,
                    status=TaskStatus.RUNNING,
                    started_at=now,
                    worker=worker,
                    token=token,
                )
                task = Task.model_validate(data)
            except (ValueError, TypeError, ValidationError) as exc:
                malformed.append(MalformedClaim(task_id, token, level, attempts, str(exc)[:500]))
                continue
            tasks.append(ClaimedTask(task=task, token=token, level_index=level))
        return Claim(tasks, malformed, int(reply[0]))

    # -- heartbeat, settle -------------------------------------------------------------

    def heartbeat(
        self,
        worker: str,
        held: Sequence[tuple[str, int, int]],
        now: int,
        info: WorkerInfo,
        lease_ms: int | None = None,
    ) -> Op:
        """`held`: (task id, token, level index) of every lease the worker holds."""
        k = self.keys
        lease = lease_ms if lease_ms is not None else int(self.config.lease_seconds * 1000)
        args: list[str | int | float] = [
            now,
            worker,
            lease,
            info.model_dump_json(),
            len(self.levels),
            len(held),
        ]
        for task_id, token, level in held:
            args += [task_id, token, level]
        keys = [k.holders, k.cancelled, k.workers, k.worker_info, *self._leases]
        lost, cancelled = yield ScriptCall("heartbeat", keys, args)
        return HeartbeatReply(lost=list(lost), cancelled=list(cancelled))

    def settle(self, settlements: Sequence[Settlement], now: int) -> Op:
        k = self.keys
        args: list[str | int | float] = [
            now,
            self.config.result_ttl_seconds * 1000,
            len(self.levels),
            len(settlements),
            k.done_channel,
        ]
        for s in settlements:
            args += [s.task_id, s.token, s.level_index, s.action, s.due_ms, s.outcome]
        keys = [
            k.tasks,
            k.attempts,
            k.holders,
            k.counters,
            k.cancelled,
            k.dead,
            k.dead_info,
            k.wake,
            *self._per_level3,
            k.results,
            k.results_expiry,
        ]
        reply = yield ScriptCall("settle", keys, args)
        return [bool(x) for x in reply]

    # Outcome builders: the worker and tests describe endings through these.

    @staticmethod
    def completion(
        claimed: ClaimedTask,
        result: Any,
        now: int,
        *,
        status: str = "completed",
        reason: str | None = None,
    ) -> Settlement:
        """Raises PayloadNotJSON when the result cannot be stored."""
        try:
            outcome = _dumps(
                {
                    "status": status,
                    "result": result,
                    "finished_at": now,
                    "started_at": claimed.task.started_at,
                    "worker": claimed.task.worker,
                    "attempts": claimed.task.attempts,
                    "reason": reason,
                }
            )
        except (TypeError, ValueError) as exc:
            raise errors.PayloadNotJSON(f"result of task {claimed.id} is not JSON: {exc}") from None
        action: SettleAction = "complete" if status == "completed" else "cancel"
        return Settlement(claimed.id, claimed.token, claimed.level_index, action, outcome)

    def failure(
        self,
        claimed: ClaimedTask,
        error: TaskError,
        now: int,
        rng: random.Random,
        *,
        permanent: bool = False,
        reason: str | None = None,
    ) -> Settlement:
        """Retry with backoff, or dead-letter when permanent or out of attempts."""
        task = claimed.task
        outcome = _dumps(
            {
                "status": "dead",
                "finished_at": now,
                "started_at": task.started_at,
                "worker": task.worker,
                "attempts": task.attempts,
                "error": error.model_dump(),
                "reason": reason or ("permanent_error" if permanent else "attempts_exhausted"),
            }
        )
        if permanent or task.attempts >= task.max_attempts:
            return Settlement(task.id, claimed.token, claimed.level_index, "dead", outcome)
        due = now + retry_delay_ms(self.config.backoff, task.attempts, rng)
        return Settlement(task.id, claimed.token, claimed.level_index, "retry", outcome, due)

    @staticmethod
    def release(claimed: ClaimedTask) -> Settlement:
        return Settlement(claimed.id, claimed.token, claimed.level_index, "release")

    @staticmethod
    def dead_letter_malformed(m: MalformedClaim, worker: str, now: int) -> Settlement:
        outcome = _dumps(
            {
                "status": "dead",
                "finished_at": now,
                "worker": worker,
                "attempts": m.attempts,
                "reason": "malformed_record",
                "error": {"type": "MalformedRecord", "message": m.error},
            }
        )
        return Settlement(m.task_id, m.token, m.level_index, "dead", outcome)

    # -- maintenance ---------------------------------------------------------------------

    def reap(self, now: int, limit: int = 1000) -> Op:
        k = self.keys
        args: list[str | int | float] = [
            now,
            len(self.levels),
            limit,
            k.done_channel,
            self.config.result_ttl_seconds * 1000,
            int(self.config.lease_seconds * 1000 * WORKER_TTL_FACTOR),
        ]
        keys = [
            k.tasks,
            k.attempts,
            k.holders,
            k.counters,
            k.cancelled,
            k.dead,
            k.dead_info,
            k.wake,
            k.workers,
            k.worker_info,
            k.results,
            k.results_expiry,
            *[x for i in range(len(self.levels)) for x in (self._ready[i], self._leases[i])],
        ]
        requeued, dead, cancelled, expired = yield ScriptCall("reap", keys, args)
        return ReapReport(
            requeued=list(requeued),
            dead=list(dead),
            cancelled=list(cancelled),
            results_expired=int(expired),
        )

    def expire_dead_letters(self, now: int, limit: int = 1000) -> Op:
        cutoff = now - self.config.dead_letter_retention_seconds * 1000
        ids = yield Command(("ZRANGEBYSCORE", self.keys.dead, "-inf", cutoff, "LIMIT", 0, limit))
        if not ids:
            return 0
        return (yield from self._purge(ids))

    def acquire_lock(self, owner: str, ttl_ms: int) -> Op:
        """A short lock so one worker at a time runs maintenance; it expires on its own."""
        reply = yield Command(("SET", self.keys.maintenance_lock, owner, "NX", "PX", ttl_ms))
        return bool(reply)

    # -- queries ---------------------------------------------------------------------

    def cancel(self, task_id: str, now: int) -> Op:
        k = self.keys
        keys = [
            k.tasks,
            k.attempts,
            k.holders,
            k.cancelled,
            k.counters,
            k.dead,
            k.results,
            k.results_expiry,
            *[x for i in range(len(self.levels)) for x in (self._ready[i], self._delayed[i])],
        ]
        args: list[str | int | float] = [
            now,
            task_id,
            self.config.result_ttl_seconds * 1000,
            k.done_channel,
            len(self.levels),
            *self.levels,
        ]
        reply = yield ScriptCall("cancel", keys, args)
        return str(reply)

    def status(self, task_id: str, now: int) -> Op:
        k = self.keys
        keys = [
            k.tasks,
            k.attempts,
            k.holders,
            k.dead,
            k.dead_info,
            k.results,
            k.cancelled,
            k.results_expiry,
            *self._delayed,
        ]
        reply = yield ScriptCall("status", keys, [task_id, len(self.levels), now])
        return parse_status(task_id, reply)

    def stats(self, now: int) -> Op:
        k = self.keys
        keys = [k.tasks, k.dead, k.workers, k.counters, *self._per_level3]
        reply = yield ScriptCall("stats", keys, [now, len(self.levels)])
        dead, workers, flat = reply[0], reply[1], reply[2]
        counters = {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
        levels = []
        for i, name in enumerate(self.levels):
            ready, delayed, due, in_flight, oldest = (int(x) for x in reply[3 + i * 5 : 8 + i * 5])
            levels.append(
                LevelStats(
                    name=name,
                    ready=ready,
                    delayed=delayed,
                    due=due,
                    in_flight=in_flight,
                    oldest_enqueued_at=oldest if oldest >= 0 else None,
                )
            )
        return QueueStats(
            queue=self.config.full_name,
            at=now,
            levels=levels,
            dead=int(dead),
            workers=int(workers),
            counters=counters,
        )

    def workers(self) -> Op:
        seen, info = yield Pipeline(
            (
                Command(("ZRANGE", self.keys.workers, 0, -1, "WITHSCORES")),
                Command(("HGETALL", self.keys.worker_info)),
            )
        )
        last_seen = {member: int(float(score)) for member, score in _scored(seen)}
        out = []
        for wid, raw in info.items() if isinstance(info, dict) else _pairs(info):
            if wid not in last_seen:
                continue
            try:
                w = WorkerInfo.model_validate_json(raw)
            except ValidationError:
                w = WorkerInfo(id=wid)
            out.append(w.model_copy(update={"id": wid, "last_seen": last_seen[wid]}))
        return sorted(out, key=lambda w: w.id)

    def dead_letters(self, offset: int = 0, limit: int = 100) -> Op:
        listed = _scored(
            (yield Command(("ZRANGE", self.keys.dead, offset, offset + limit - 1, "WITHSCORES")))
        )
        ids = [member for member, _ in listed]
        if not ids:
            return []
        records, infos, attempts = yield Pipeline(
            (
                Command(("HMGET", self.keys.tasks, *ids)),
                Command(("HMGET", self.keys.dead_info, *ids)),
                Command(("HMGET", self.keys.attempts, *ids)),
            )
        )
        out = []
        for i, tid in enumerate(ids):
            task = _compose(tid, records[i], infos[i], TaskStatus.DEAD)
            if attempts[i] is not None:
                task = task.model_copy(update={"attempts": int(attempts[i])})
            out.append(DeadLetter(task=task, dead_at=int(float(listed[i][1]))))
        return out

    def requeue_dead(self, ids: Sequence[str] | None = None, limit: int = 1000) -> Op:
        if ids is None:
            ids = yield Command(("ZRANGE", self.keys.dead, 0, limit - 1))
        if not ids:
            return []
        k = self.keys
        keys = [k.tasks, k.attempts, k.dead, k.dead_info, k.wake, k.counters, *self._ready]
        args: list[str | int | float] = [len(self.levels), *self.levels, len(ids), *ids]
        return list((yield ScriptCall("requeue", keys, args)))

    def purge_dead(self, ids: Sequence[str] | None = None, limit: int = 1000) -> Op:
        if ids is None:
            ids = yield Command(("ZRANGE", self.keys.dead, 0, limit - 1))
        if not ids:
            return 0
        return (yield from self._purge(ids))

    def _purge(self, ids: Sequence[str]) -> Op:
        k = self.keys
        reply = yield ScriptCall(
            "purge", [k.tasks, k.attempts, k.dead, k.dead_info], [len(ids), *ids]
        )
        return int(reply)

    def finished_page(self, cursor: int, count: int = 1000) -> Op:
        """One page of finished tasks (completed, cancelled) and the cursor of the next.

        A scan: entries past their TTL but not yet pruned by the reaper can appear.
        """
        reply = yield Command(("HSCAN", self.keys.results, cursor, "COUNT", count))
        next_cursor, entries = reply
        pairs = entries.items() if isinstance(entries, dict) else _pairs(entries)
        return int(next_cursor), [terminal_task(tid, raw) for tid, raw in pairs]

    def publish_config(self) -> Command:
        return Command(("SET", self.keys.config, self.config.model_dump_json()))


def _pairs(flat: Sequence[Any]) -> Iterable[tuple[Any, Any]]:
    return ((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))


def _scored(reply: Sequence[Any]) -> list[tuple[Any, Any]]:
    """ZRANGE ... WITHSCORES, whether the client parsed it into pairs or left it flat."""
    if reply and isinstance(reply[0], list | tuple):
        return [(m, s) for m, s in reply]
    return list(_pairs(reply))


def _loads_dict(raw: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _compose(task_id: str, record: str | None, outcome: str | None, status: TaskStatus) -> Task:
    """A Task from its stored record plus an outcome JSON.

    A damaged record (a foreign writer, a bug) is shown as it is, raw text in `payload`,
    rather than hiding the task: it must stay listable, requeue-able and purgeable.
    """
    base: dict[str, Any] = {
        "id": task_id,
        "queue": "?",
        "type": "?",
        "priority": "?",
        "max_attempts": 0,
        "created_at": 0,
        "due_at": 0,
    }
    fields = _loads_dict(record)
    ending = {k: v for k, v in (_loads_dict(outcome) or {}).items() if v is not None}
    data = {**base, **(fields if fields is not None else {"payload": record}), **ending}
    data["id"] = task_id
    data.setdefault("status", status)
    try:
        return Task.model_validate(data)
    except ValidationError:
        return Task.model_validate({**base, "payload": record, **ending, "status": status})


def terminal_task(task_id: str, terminal: str) -> Task:
    """A Task from its terminal record {"task": ..., "outcome": ...}."""
    parsed = _loads_dict(terminal) or {}
    outcome = parsed.get("outcome") or {}
    return _compose(
        task_id,
        _dumps(parsed.get("task")),
        _dumps(outcome),
        TaskStatus(outcome.get("status", "completed")),
    )


def parse_status(task_id: str, reply: Sequence[Any]) -> Task:
    terminal, record, attempts, holder, dead_at, dead_info, due, cancel = reply
    if terminal:
        return terminal_task(task_id, terminal)
    if not record:
        raise errors.TaskNotFound(f"no task {task_id} (never submitted, or its record expired)")
    if dead_at:
        task = _compose(task_id, record, dead_info, TaskStatus.DEAD)
    else:
        task = _compose(task_id, record, None, TaskStatus.PENDING)
    update: dict[str, Any] = {"attempts": int(attempts or 0), "cancel_requested": bool(cancel)}
    if dead_at:
        update["status"] = TaskStatus.DEAD
    elif holder:
        token, rest = holder.split("|", 1)
        worker, started = rest.rsplit("|", 1)
        update.update(
            status=TaskStatus.RUNNING, token=int(token), worker=worker, started_at=int(started)
        )
    elif due:
        update.update(
            status=TaskStatus.RETRYING if int(attempts or 0) else TaskStatus.SCHEDULED,
            due_at=int(float(due)),
        )
    return task.model_copy(update=update)


def result_of(task: Task) -> Any:
    """The result of a finished task, or TaskFailed for dead and cancelled ones."""
    if task.status == TaskStatus.COMPLETED:
        return task.result
    detail = task.error.message if task.error else (task.reason or task.status.value)
    raise errors.TaskFailed(
        f"task {task.id} ended {task.status.value}: {detail}",
        status=task.status.value,
        error=task.error,
    )
