"""The protocol's operations, written once for both clients, without I/O.

Each operation is a generator: it yields `Request`s (a script call, a command or a
pipeline of commands), receives each reply, and returns the result. `Client` drives it
with blocking calls and `AsyncClient` with awaits, so keys, arguments and parsing exist
exactly once. `now` always comes from the caller.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from pydantic import BaseModel, ValidationError

from kubeq.protocol import errors
from kubeq.protocol.backoff import retry_delay_ms
from kubeq.protocol.config import MAX_ATTEMPTS_CAP, QueueConfig
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
    TaskProgress,
    TaskStatus,
    WorkerInfo,
)

MAX_TYPE_LENGTH = 200
# The safe pattern of task types (docs/security.md): no spaces, control characters or
# markup, so a type can never forge a log line or colour a terminal.
TASK_TYPE_PATTERN = rf"^[A-Za-z0-9_][A-Za-z0-9_.:/@+-]{{0,{MAX_TYPE_LENGTH - 1}}}$"
TASK_TYPE_RE = re.compile(TASK_TYPE_PATTERN)
_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_IDEMPOTENCY_KEY_LENGTH = 256
#: Bounds of a task's `headers` (string metadata such as a W3C trace context).
MAX_HEADERS = 16
MAX_HEADERS_BYTES = 2048
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Largest `ctx.progress` value, in bytes of its JSON encoding: progress is a small status
#: ("42 of 100 rows"), not a result channel; a bigger value is refused with
#: ProgressNotStorable when the handler reports it.
MAX_PROGRESS_BYTES = 2048
#: Most tasks one script call handles (= MAX_BATCH in lua/_lib.lua). Every operation
#: chunks a bigger request into several calls, so no script ever unpacks an unbounded table.
MAX_SCRIPT_BATCH = 1000
DEFAULT_CHUNK = MAX_SCRIPT_BATCH
#: Deepest nesting of lists/objects accepted in a payload or a result.
MAX_PAYLOAD_DEPTH = 64
#: Longest accepted `delay`, and the latest accepted `eta_ms` (end of year 9999).
MAX_DELAY_SECONDS = 10 * 366 * 24 * 3600
MAX_ETA_MS = 253_402_300_799_999
MAX_REAP_ROUNDS = 64  # one reap() call returns at most this many batches of expired leases
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
    #: small string metadata carried in the record to the worker (e.g. a trace context)
    headers: Mapping[str, str] | None = None


class RequestFields(Protocol):
    """What encoding reads of a request: a TaskRequest, or a dict item's MappedRequest."""

    @property
    def type(self) -> str: ...
    @property
    def payload(self) -> Any: ...
    @property
    def priority(self) -> str | None: ...
    @property
    def delay(self) -> float | None: ...
    @property
    def eta_ms(self) -> int | None: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def max_attempts(self) -> int | None: ...
    @property
    def id(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, str] | None: ...


@dataclass(slots=True)
class MappedRequest:
    """A `submit_many` dict item's fields: TaskRequest's, built five times faster (the
    frozen dataclass sets each field through object.__setattr__); never handed out."""

    type: str
    payload: Any = None
    priority: str | None = None
    delay: float | None = None
    eta_ms: int | None = None
    idempotency_key: str | None = None
    max_attempts: int | None = None
    id: str | None = None
    headers: Mapping[str, str] | None = None


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__
# (3x the cost), and one is built per task; nothing changes one once built.
@dataclass(slots=True)
class Settlement:
    """How one leased task ends: see settle.lua for the actions.

    Fenced by `token` and `worker` together: only the holder of that very lease settles.
    A retry is sent as `delay_ms`, a duration the script adds to Redis's clock, so a
    skewed worker clock cannot move it; `due_ms` is the worker's own estimate of that time
    (for its wake-ups), never sent.
    """

    task_id: str
    token: int
    level_index: int
    action: SettleAction
    outcome: str = "{}"  # JSON, checked to be UTF-8 when built
    delay_ms: int = 0
    worker: str = ""
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


@dataclass(frozen=True)
class WokenClaim:
    """A wait on the wake list and the claim that followed it."""

    #: the wait ended on a wake-up (not its timeout)
    woke: bool
    claim: Claim


def new_task_id() -> str:
    """128 random bits as 32 hex digits (the shape of uuid4().hex, at a fifth of the cost)."""
    return os.urandom(16).hex()


def new_task_ids(n: int) -> list[str]:
    """`n` ids as `new_task_id` makes them, from one read of the system's randomness."""
    digits = os.urandom(16 * n).hex()
    return [digits[i : i + 32] for i in range(0, 32 * n, 32)]


@functools.lru_cache(maxsize=1024)
def _type_literal(text: str) -> str:
    """A task type, checked and as a JSON string literal: a handful of distinct values,
    checked and encoded once each (exceptions are not cached)."""
    if not TASK_TYPE_RE.match(text):
        raise errors.InvalidTask(
            f"task type must be 1-{MAX_TYPE_LENGTH} characters of A-Z a-z 0-9 and _.:/@+- "
            f"(it reaches logs, terminals and metric labels), got {text[:MAX_TYPE_LENGTH]!r}"
        )
    return _dumps(text)


# One encoder instance: json.dumps() with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_dumps = _ENCODER.encode


_CONTAINERS = (dict, list, tuple)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when lists/dicts nest deeper than `limit` (iterative: no recursion to blow)."""
    if not isinstance(value, _CONTAINERS):
        return False
    # Fast path for the common payload: one level of scalars.
    top = value.values() if isinstance(value, dict) else value
    nested = [c for c in top if isinstance(c, _CONTAINERS)]
    if not nested:
        return limit < 1
    stack: list[tuple[Any, int]] = [(c, 2) for c in nested]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return False


def utf8_size(text: str) -> int:
    """Encoded size of `text`; UnicodeEncodeError for a lone surrogate."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


@functools.lru_cache(maxsize=256)
def _json_text(value: str | None) -> str:
    """A worker id or status as stored JSON (a handful per process: cached)."""
    return _utf8_safe(_dumps(value))


def _json_int(value: int | None) -> str:
    return str(value) if type(value) is int else _dumps(value)


def _plain_outcome(status: str, now: int, task: Task) -> str:
    """The outcome of an ending with no result and no reason, as `completion` would encode
    it through the JSON encoder (tests compare the two), at a fraction of the cost."""
    return (
        f'{{"result":null,"status":{_json_text(status)},"finished_at":{_json_int(now)},'
        f'"started_at":{_json_int(task.started_at)},"worker":{_json_text(task.worker)},'
        f'"attempts":{_json_int(task.attempts)},"reason":null}}'
    )


def _utf8_safe(text: str) -> str:
    """`text` with lone surrogates escaped (\\udXXX): for kubeq's own outcome records,
    whose error messages come from arbitrary exceptions and must always be storable."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _chunks(items: Sequence[Any], size: int = MAX_SCRIPT_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_count(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise errors.ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise errors.ConfigError(f"{name} must be at most {high}, got {value!r}")
    return value


EncodedTask: TypeAlias = tuple[str, int, int, int, str | None, str, str, int]


class QueueOps:
    """Builds every operation for one queue. Pure: no connection, no clock.

    `server_clock`: scripts read Redis's own clock (TIME) instead of the `now` a caller
    passes; `now` then only stamps informational fields (created_at, finished_at).
    """

    def __init__(self, config: QueueConfig, *, server_clock: bool = False) -> None:
        self.config = config
        self.server_clock = server_clock
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
        self._lease_ms = int(config.lease_seconds * 1000)
        self._default_level = config.default_level

    def _level_keys3(self, i: int) -> tuple[str, str, str]:
        return self._ready[i], self._delayed[i], self._leases[i]

    def _now_arg(self, now: int) -> int:
        """What a script receives as now_ms: 0 asks it to read Redis's clock."""
        return 0 if self.server_clock else now

    def level_index(self, priority: str | None) -> int:
        name = priority if priority is not None else self._default_level
        try:
            return self._level_index[name]
        except (KeyError, TypeError):
            raise errors.UnknownPriority(
                f"unknown priority {name!r} for queue {self.config.full_name}; "
                f"levels are {', '.join(self.levels)}"
            ) from None

    # -- submit ------------------------------------------------------------------------

    def encode_task(self, req: RequestFields, now: int, fresh_id: str | None = None) -> EncodedTask:
        """Validate one request. `fresh_id`: the id to give it if the caller chose none
        (else one is drawn here).

        Returns (id, level index, delay ms, eta ms or 0, idempotency key, meta head,
        record, 1 when the caller chose the id). Every way a request can be wrong raises
        an InvalidTask subclass here, before anything reaches Redis.
        """
        if type(req.type) is not str:
            raise errors.InvalidTask(f"task type must be a string, got {req.type!r}")
        type_literal = _type_literal(req.type)
        level = self.level_index(req.priority)
        payload = self._encode_payload(req)
        delay_ms, eta_ms, due = self._timing(req, now)
        key = req.idempotency_key
        if key is not None:
            if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
                raise errors.InvalidTask(
                    f"idempotency key must be a string of 1-{MAX_IDEMPOTENCY_KEY_LENGTH} "
                    f"characters, got {key!r}"
                )
            try:
                utf8_size(key)
            except UnicodeEncodeError:
                raise errors.InvalidText(f"idempotency key {key!r} is not valid UTF-8") from None
        max_attempts = req.max_attempts
        if max_attempts is None:
            max_attempts = self.config.max_attempts  # validated by QueueConfig
        elif (
            type(max_attempts) is not int  # not bool either
            or not 1 <= max_attempts <= MAX_ATTEMPTS_CAP
        ):
            raise errors.InvalidTask(
                f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS_CAP}, "
                f"got {max_attempts!r}"
            )
        if req.id is None:
            task_id = fresh_id or new_task_id()
        elif isinstance(req.id, str) and _ID_RE.match(req.id):
            task_id = req.id
        else:
            raise errors.InvalidTask(f"task id {req.id!r} must be 1-128 of [A-Za-z0-9._:-]")
        # Built by hand around the already-encoded payload: encoding it twice would double
        # the cost of the hot path.
        quoted_key = "null" if key is None else _dumps(key)
        headers = "" if req.headers is None else f'"headers":{encode_headers(req.headers)},'
        level_name = self.levels[level - 1]
        record = (
            f'{{"id":"{task_id}{self._record_head}{type_literal},'
            f'"priority":"{level_name}","max_attempts":{max_attempts},'
            f'"created_at":{now},"due_at":{due},"idempotency_key":{quoted_key},'
            f'{headers}"payload":{payload}}}'
        )
        meta_head = f"{level_name}|{max_attempts}|{due}"
        return task_id, level, delay_ms, eta_ms, key, meta_head, record, int(req.id is not None)

    def _encode_payload(self, req: RequestFields) -> str:
        value = req.payload
        if value is None:  # no payload: nothing to encode or check
            return "null"
        if isinstance(value, BaseModel):  # a pydantic model travels as its JSON form
            value = value.model_dump(mode="json")
        try:
            payload = _dumps(value)
        except RecursionError:
            raise self._too_deep(req) from None
        except (TypeError, ValueError) as exc:
            raise errors.PayloadNotJSON(
                f"payload of a {req.type!r} task is not JSON: {exc}"
            ) from None
        # Walk the structure only when the text has enough brackets to be too deep.
        if payload.count("[") + payload.count("{") > MAX_PAYLOAD_DEPTH and json_depth_exceeds(
            value, MAX_PAYLOAD_DEPTH
        ):
            raise self._too_deep(req)
        try:
            size = utf8_size(payload)
        except UnicodeEncodeError as exc:
            raise errors.InvalidText(
                f"payload of a {req.type!r} task has a string that is not valid UTF-8: {exc}"
            ) from None
        if size > self.config.max_payload_bytes:
            raise errors.PayloadTooLarge(
                f"payload of a {req.type!r} task is {size} bytes; the limit of queue "
                f"{self.config.full_name} is {self.config.max_payload_bytes} bytes"
            )
        return payload

    @staticmethod
    def _too_deep(req: RequestFields) -> errors.PayloadTooDeep:
        return errors.PayloadTooDeep(
            f"payload of a {req.type!r} task nests deeper than {MAX_PAYLOAD_DEPTH} levels"
        )

    @staticmethod
    def _timing(req: RequestFields, now: int) -> tuple[int, int, int]:
        """(delay ms, eta ms or 0, informational due ms) of a request."""
        delay, eta = req.delay, req.eta_ms
        if delay is None and eta is None:
            return 0, 0, now
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or not 0 <= delay <= MAX_DELAY_SECONDS
        ):
            raise errors.InvalidTask(
                f"delay must be a finite number of seconds from 0 to {MAX_DELAY_SECONDS}, "
                f"got {delay!r}"
            )
        latest = min(MAX_ETA_MS, now + MAX_DELAY_SECONDS * 1000)
        if eta is not None and (
            isinstance(eta, bool) or not isinstance(eta, int) or not 0 <= eta <= latest
        ):
            raise errors.InvalidTask(
                f"eta_ms must be an integer epoch ms at most {MAX_DELAY_SECONDS} s "
                f"(about 10 years) from now, got {eta!r}"
            )
        if eta is not None:
            # Absolute: the script compares it with its own now (max(now, eta)).
            return 0, max(eta, 1), max(now, eta)
        delay_ms = int(delay * 1000) if delay else 0
        return delay_ms, 0, now + delay_ms

    def submit_many(
        self, requests: Iterable[RequestFields], now: int, chunk_size: int = DEFAULT_CHUNK
    ) -> Op:
        _check_count("chunk_size", chunk_size, 1, MAX_SCRIPT_BATCH)
        # Validate every item before writing any chunk.
        requests = list(requests)
        ids = new_task_ids(len(requests))  # one system call, not one per task
        encoded = [self.encode_task(r, now, fresh) for r, fresh in zip(requests, ids, strict=True)]
        types = [r.type for r in requests]
        seen: set[str] = set()
        for task_id, *_ in encoded:
            if task_id in seen:
                raise errors.TaskExists(
                    f"task id {task_id} appears more than once in one submit_many call; "
                    "nothing was submitted"
                )
            seen.add(task_id)
        accepted: list[str] = []
        for start in range(0, len(encoded), chunk_size):
            chunk = encoded[start : start + chunk_size]
            try:
                ids = yield self._submit_chunk(chunk, now, types[start : start + chunk_size])
            except errors.KubeqError as exc:
                # Whatever failed, say exactly what earlier chunks enqueued; a lost reply
                # leaves this chunk's fate unknown, a refusal means nothing of it was written.
                exc.accepted = list(accepted)
                exc.uncertain = (
                    [t[0] for t in chunk] if isinstance(exc, errors.ConnectionFailed) else []
                )
                raise
            accepted.extend(ids)
        return accepted

    def _submit_chunk(
        self, chunk: Sequence[EncodedTask], now: int, types: Sequence[str] = ()
    ) -> ScriptCall:
        k = self.keys
        idem_keys: list[str] = []
        slots: dict[str, int] = {}
        checks = any(t[4] is not None or t[7] for t in chunk)
        args: list[str | int | float] = [
            self._now_arg(now),
            self.config.max_backlog or 0,
            WAKE_CAP,
            self.config.idempotency_ttl * 1000,
            len(self.levels),
            len(chunk),
            int(checks),
        ]
        for task_id, level, delay_ms, eta_ms, key, meta_head, record, chosen in chunk:
            args += [task_id, level, delay_ms, eta_ms, meta_head, record]
            if not checks:  # a plain chunk: no idempotency index or chosen flag per task
                continue
            idem = 0
            if key is not None:
                # One KEYS slot per distinct key: a key repeated within the chunk is one key.
                idem = slots.get(key, 0)
                if not idem:
                    idem_keys.append(k.idempotency(key))
                    idem = slots[key] = len(idem_keys)
            # Only a caller-chosen id needs the existence check: a generated one is 128
            # random bits.
            args += [idem, chosen]
        # Per-type `submitted` counts: the chunk's distinct types, then (several types
        # only) one index per task.
        names = list(dict.fromkeys(types))
        if len(names) > 1:
            index = {t: i + 1 for i, t in enumerate(names)}
            args += [len(names), *names, *(index[t] for t in types)]
        else:
            args += [len(names), *names]
        keys = [
            k.tasks,
            k.wake,
            k.counters,
            k.meta,
            k.seq,
            k.results,
            *self._ready,
            *self._delayed,
            *idem_keys,
            k.type_counters,  # last: submit.lua finds it at KEYS[#KEYS]
        ]
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
        self,
        worker: str,
        n: int,
        now: int,
        order: Sequence[int],
        lease_ms: int | None = None,
        claim_id: str | None = None,
    ) -> Op:
        """Lease up to `n` tasks, in script calls of at most MAX_SCRIPT_BATCH.

        `claim_id`: repeat a claim whose reply was lost with the same id, and the tasks it
        leased come back (still held, attempt charged once) instead of new ones.
        """
        _check_count("claim size", n, 0)
        tasks: list[ClaimedTask] = []
        malformed: list[MalformedClaim] = []
        wait = 0
        chunk = 0
        left = n
        while left > 0:
            want = min(left, MAX_SCRIPT_BATCH)
            call = self._claim_call(worker, want, now, order, lease_ms, claim_id, chunk)
            reply = yield call
            part = self.parse_claim(reply, worker, now)
            tasks += part.tasks
            malformed += part.malformed
            wait = part.rate_wait_ms
            got = len(part.tasks) + len(part.malformed)
            if got < want or wait > 0:
                break
            left -= got
            chunk += 1
        return Claim(tasks, malformed, wait)

    def abandon_claim(self, worker: str, claim_id: str, now: int, order: Sequence[int]) -> Op:
        """Settle the fate of a claim whose reply may be lost, without leasing anything:
        the tasks it leased that this worker still holds come back (to be released), and
        if it has not run, its id is spent so that it takes nothing if it runs later (a
        claim queued behind a blocking wait on a connection that was dropped)."""
        if not isinstance(claim_id, str) or not claim_id:
            raise errors.ConfigError(f"claim_id must be a non-empty string, got {claim_id!r}")
        reply = yield self._claim_call(worker, 0, now, order, None, claim_id, 0)
        claim: Claim = self.parse_claim(reply, worker, now)
        return claim

    def _claim_call(
        self,
        worker: str,
        want: int,
        now: int,
        order: Sequence[int],
        lease_ms: int | None,
        claim_id: str | None,
        chunk: int,
    ) -> ScriptCall:
        """One claim.lua call of at most MAX_SCRIPT_BATCH tasks (0: abandon `claim_id`)."""
        lease = _check_count("lease_ms", lease_ms if lease_ms is not None else self._lease_ms, 1)
        if not isinstance(worker, str) or not worker:
            raise errors.ConfigError(f"worker id must be a non-empty string, got {worker!r}")
        if claim_id is not None and (not isinstance(claim_id, str) or not claim_id):
            raise errors.ConfigError(f"claim_id must be a non-empty string, got {claim_id!r}")
        k = self.keys
        rate = self.config.rate_limit
        keys = [
            k.tasks,
            k.attempts,
            k.holders,
            k.fence,
            k.counters,
            k.rate_bucket,
            k.wake,
            k.meta,
            k.claims(worker),
        ]
        for i in order:
            keys += self._level_keys3(i)
        keys.append(k.paused)  # last: claim.lua finds it at KEYS[#KEYS]
        args: list[str | int | float] = [
            self._now_arg(now),
            want,
            worker,
            lease,
            len(order),
            PROMOTE_LIMIT,
            repr(rate.per_second / 1000.0) if rate else 0,
            rate.burst if rate else 0,
            claim_id or "",
            chunk,
            *[i + 1 for i in order],
        ]
        return ScriptCall("claim", keys, args)

    def parse_claim(self, reply: list[Any], worker: str, now: int) -> Claim:
        """Each task on its own: one that cannot be parsed, whatever the reason, becomes a
        MalformedClaim (dead-lettered alone by the worker); the rest of the batch runs."""
        tasks: list[ClaimedTask] = []
        malformed: list[MalformedClaim] = []
        lease = f'"status":"running","started_at":{int(now)},"worker":{json.dumps(worker)}'
        for item in reply[1:]:
            level_s, token_s, attempts_s, task_id, record = item.split(" ", 4)
            level, token, attempts = int(level_s), int(token_s), int(attempts_s)
            try:
                # One pass of pydantic's JSON parser over the record with the lease's fields
                # appended (the last of duplicate keys wins, so ours override the record's):
                # half the cost of json.loads, dict.update and model_validate.
                body = record.strip()
                if not (body.startswith("{") and body.endswith("}")):
                    raise TypeError("record is not a JSON object")
                inner = body[1:-1]
                # Generated ids are hex: quoted as they are; any other goes through JSON.
                quoted = (
                    f'"{task_id}"'
                    if task_id.isascii() and task_id.isalnum()
                    else json.dumps(task_id)
                )
                lease_fields = f'"id":{quoted},"attempts":{attempts},"token":{token},{lease}'
                task = Task.model_validate_json(
                    f"{{{inner},{lease_fields}}}" if inner.strip() else f"{{{lease_fields}}}"
                )
            except Exception as exc:  # any defect of one record is that task's alone
                message = _utf8_safe(f"{type(exc).__name__}: {exc}"[:500])
                malformed.append(MalformedClaim(task_id, token, level, attempts, message))
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
        lease = _check_count("lease_ms", lease_ms if lease_ms is not None else self._lease_ms, 1)
        keys = [k.holders, k.cancelled, k.workers, k.worker_info, *self._leases]
        lost: list[str] = []
        cancelled: list[str] = []
        info_json = info.model_dump_json()
        for chunk in [*_chunks(held)] or [[]]:
            args: list[str | int | float] = [
                self._now_arg(now),
                worker,
                lease,
                info_json,
                len(self.levels),
                len(chunk),
            ]
            for task_id, token, level in chunk:
                args += [task_id, token, level]
            part_lost, part_cancelled = yield ScriptCall("heartbeat", keys, args)
            lost += part_lost
            cancelled += part_cancelled
        return HeartbeatReply(lost=lost, cancelled=cancelled)

    def progress(self, worker: str, reports: Sequence[tuple[str, int, str]], now: int) -> Op:
        """Store progress values: `reports` are (task id, token, value JSON from
        `encode_progress`). Each is written only while `worker` holds that lease; returns
        one bool per report (False: the lease is gone, the value was dropped)."""
        for task_id, _token, value in reports:
            if not value or utf8_size(value) > MAX_PROGRESS_BYTES:
                raise errors.ProgressNotStorable(
                    f"progress of task {task_id} must be 1..{MAX_PROGRESS_BYTES} bytes of JSON"
                )
        keys = [self.keys.holders, self.keys.progress]
        written: list[bool] = []
        for chunk in _chunks(reports):
            args: list[str | int | float] = [
                self._now_arg(now),
                worker,
                MAX_PROGRESS_BYTES,
                len(chunk),
            ]
            for task_id, token, value in chunk:
                args += [task_id, token, value]
            reply = yield ScriptCall("progress", keys, args)
            written += [bool(x) for x in reply]
        return written

    def settle(self, settlements: Sequence[Settlement], now: int) -> Op:
        k = self.keys
        for s in settlements:
            self._check_settlement(s)
        keys = [
            k.tasks,
            k.attempts,
            k.holders,
            k.counters,
            k.cancelled,
            k.dead,
            k.dead_info,
            k.wake,
            k.meta,
            k.results,
            k.results_expiry,
            *self._per_level3,
            *k.flow_keys,
            k.progress,
        ]
        applied: list[bool] = []
        for chunk in _chunks(settlements):
            args: list[str | int | float] = [
                self._now_arg(now),
                self.config.result_ttl_seconds * 1000,
                len(self.levels),
                len(chunk),
                k.done_channel,
                self.config.dead_letter_retention_seconds * 1000,
            ]
            for s in chunk:
                args += [s.task_id, s.token, s.worker, s.level_index, s.action, s.delay_ms]
                args.append(s.outcome)
            reply = yield ScriptCall("settle", keys, args)
            applied += [bool(x) for x in reply]
        return applied

    def _check_settlement(self, s: Settlement) -> None:
        if (
            s.action not in _ACTIONS
            or isinstance(s.level_index, bool)
            or not isinstance(s.level_index, int)
            or not 1 <= s.level_index <= len(self.levels)
            or isinstance(s.delay_ms, bool)
            or not isinstance(s.delay_ms, int)
            or s.delay_ms < 0
            or not isinstance(s.outcome, str)
        ):
            raise errors.InvalidTask(f"invalid settlement {s!r}: nothing was settled")

    # Outcome builders: the worker and tests describe endings through these. Each encodes
    # its outcome (and checks it is UTF-8) here, so one bad result fails its own task and
    # can never poison a settle batch.

    def completion(
        self,
        claimed: ClaimedTask,
        result: Any,
        now: int,
        *,
        status: str = "completed",
        reason: str | None = None,
    ) -> Settlement:
        """Raises ResultNotJSON or ResultTooLarge when the result cannot be stored."""
        if result is None and reason is None:  # the common ending, without the encoder
            return Settlement(
                claimed.id,
                claimed.token,
                claimed.level_index,
                "complete" if status == "completed" else "cancel",
                _plain_outcome(status, now, claimed.task),
                worker=claimed.task.worker or "",
            )
        if json_depth_exceeds(result, MAX_PAYLOAD_DEPTH):
            raise errors.ResultNotJSON(
                f"result of task {claimed.id} nests deeper than {MAX_PAYLOAD_DEPTH} levels"
            )
        try:
            encoded = _dumps(result)
            size = utf8_size(encoded)
        except (TypeError, ValueError, RecursionError) as exc:
            raise errors.ResultNotJSON(f"result of task {claimed.id} is not JSON: {exc}") from None
        if size > self.config.max_result_bytes:
            raise errors.ResultTooLarge(
                f"result of task {claimed.id} is {size} bytes; the limit of queue "
                f"{self.config.full_name} is {self.config.max_result_bytes} bytes"
            )
        rest = _utf8_safe(
            _dumps(
                {
                    "status": status,
                    "finished_at": now,
                    "started_at": claimed.task.started_at,
                    "worker": claimed.task.worker,
                    "attempts": claimed.task.attempts,
                    "reason": reason,
                }
            )
        )
        outcome = f'{{"result":{encoded},{rest[1:]}'
        action: SettleAction = "complete" if status == "completed" else "cancel"
        return Settlement(
            claimed.id,
            claimed.token,
            claimed.level_index,
            action,
            outcome,
            worker=claimed.task.worker or "",
        )

    def failure(
        self,
        claimed: ClaimedTask,
        error: TaskError,
        now: int,
        rng: random.Random,
        *,
        permanent: bool = False,
        reason: str | None = None,
        delay: float | None = None,
    ) -> Settlement:
        """Retry with backoff (or after `delay` seconds), or dead-letter when permanent or
        out of attempts."""
        task = claimed.task
        outcome = _utf8_safe(
            _dumps(
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
        )
        worker = task.worker or ""
        if permanent or task.attempts >= task.max_attempts:
            return Settlement(
                task.id, claimed.token, claimed.level_index, "dead", outcome, worker=worker
            )
        if delay is not None and math.isfinite(delay) and delay >= 0:
            delay_ms = int(min(delay, MAX_DELAY_SECONDS) * 1000)
        else:
            delay_ms = retry_delay_ms(self.config.backoff, task.attempts, rng)
        return Settlement(
            task.id,
            claimed.token,
            claimed.level_index,
            "retry",
            outcome,
            delay_ms,
            worker,
            now + delay_ms,
        )

    @staticmethod
    def release(claimed: ClaimedTask) -> Settlement:
        return Settlement(
            claimed.id,
            claimed.token,
            claimed.level_index,
            "release",
            worker=claimed.task.worker or "",
        )

    @staticmethod
    def dead_letter_malformed(m: MalformedClaim, worker: str, now: int) -> Settlement:
        outcome = _utf8_safe(
            _dumps(
                {
                    "status": "dead",
                    "finished_at": now,
                    "worker": worker,
                    "attempts": m.attempts,
                    "reason": "malformed_record",
                    "error": {"type": "MalformedRecord", "message": m.error},
                }
            )
        )
        return Settlement(m.task_id, m.token, m.level_index, "dead", outcome, worker=worker)

    # -- maintenance ---------------------------------------------------------------------

    def reap(self, now: int, limit: int = MAX_SCRIPT_BATCH, rounds: int = MAX_REAP_ROUNDS) -> Op:
        """Expired leases and results, in batches of `limit`, until none are left (or
        `rounds` batches ran: the caller's next reap continues)."""
        _check_count("reap limit", limit, 1, MAX_SCRIPT_BATCH)
        k = self.keys
        args: list[str | int | float] = [
            self._now_arg(now),
            len(self.levels),
            limit,
            k.done_channel,
            self.config.result_ttl_seconds * 1000,
            int(self.config.lease_seconds * 1000 * WORKER_TTL_FACTOR),
            self.config.max_attempts,
            self.config.dead_letter_retention_seconds * 1000,
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
            k.meta,
            *[x for i in range(len(self.levels)) for x in (self._ready[i], self._leases[i])],
            *k.flow_keys,
            k.progress,
        ]
        report = ReapReport(requeued=[], dead=[], cancelled=[])
        for _ in range(rounds):
            requeued, dead, cancelled, expired, more = yield ScriptCall("reap", keys, args)
            report.requeued += requeued
            report.dead += dead
            report.cancelled += cancelled
            report.results_expired += int(expired)
            if not int(more):
                break
        return report

    def expire_dead_letters(self, now: int, limit: int = MAX_SCRIPT_BATCH) -> Op:
        _check_count("limit", limit, 1)
        if self.server_clock:
            seconds, micros = yield Command(("TIME",))
            now = int(seconds) * 1000 + int(micros) // 1000
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
            k.meta,
            *[x for i in range(len(self.levels)) for x in (self._ready[i], self._delayed[i])],
            *k.flow_keys,
        ]
        args: list[str | int | float] = [
            self._now_arg(now),
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
            k.progress,
        ]
        reply = yield ScriptCall("status", keys, [task_id, len(self.levels), self._now_arg(now)])
        return parse_status(task_id, reply)

    def stats(self, now: int) -> Op:
        k = self.keys
        keys = [k.meta, k.dead, k.workers, k.counters, *self._per_level3, k.paused]
        reply = yield ScriptCall("stats", keys, [self._now_arg(now), len(self.levels)])
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
        paused_at, paused_reason = parse_paused(reply[-1])
        return QueueStats(
            queue=self.config.full_name,
            at=int(reply[-2]),
            paused=paused_at is not None,
            paused_at=paused_at,
            paused_reason=paused_reason,
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
        """Dead letters from `offset`, oldest first, read in pages of MAX_SCRIPT_BATCH."""
        _check_count("offset", offset, 0)
        _check_count("limit", limit, 1)
        out: list[DeadLetter] = []
        while len(out) < limit:
            start = offset + len(out)
            stop = start + min(limit - len(out), MAX_SCRIPT_BATCH) - 1
            page = yield from self._dead_page(start, stop)
            out += page
            if len(page) < stop - start + 1:
                break
        return out

    def _dead_page(self, start: int, stop: int) -> Op:
        listed = _scored((yield Command(("ZRANGE", self.keys.dead, start, stop, "WITHSCORES"))))
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
            _check_count("limit", limit, 1)
            ids = yield Command(("ZRANGE", self.keys.dead, 0, limit - 1))
        if not ids:
            return []
        k = self.keys
        keys = [
            k.tasks,
            k.attempts,
            k.dead,
            k.dead_info,
            k.wake,
            k.counters,
            k.meta,
            *self._ready,
        ]
        out: list[str] = []
        for chunk in _chunks(list(ids)):
            args: list[str | int | float] = [len(self.levels), *self.levels, len(chunk), *chunk]
            out += yield ScriptCall("requeue", keys, args)
        return out

    def purge_dead(self, ids: Sequence[str] | None = None, limit: int = 1000) -> Op:
        if ids is None:
            _check_count("limit", limit, 1)
            ids = yield Command(("ZRANGE", self.keys.dead, 0, limit - 1))
        if not ids:
            return 0
        return (yield from self._purge(ids))

    def _purge(self, ids: Sequence[str]) -> Op:
        k = self.keys
        purged = 0
        for chunk in _chunks(list(ids)):
            purged += int(
                (
                    yield ScriptCall(
                        "purge",
                        [k.tasks, k.attempts, k.dead, k.dead_info, k.meta],
                        [len(chunk), *chunk],
                    )
                )
            )
        return purged

    def finished_page(self, cursor: int, count: int = 1000) -> Op:
        """One page of finished tasks (completed, cancelled) and the cursor of the next.

        A scan: entries past their TTL but not yet pruned by the reaper can appear.
        """
        reply = yield Command(("HSCAN", self.keys.results, cursor, "COUNT", count))
        next_cursor, entries = reply
        pairs = entries.items() if isinstance(entries, dict) else _pairs(entries)
        return int(next_cursor), [terminal_task(tid, raw) for tid, raw in pairs]

    def leases_page(self, cursor: int, count: int = 1000) -> Op:
        """One page of the queue's leases and the cursor of the next (0: done): (task id,
        worker id) per leased task, from the fencing state ("token|worker|started_ms"),
        never a task's record. A scan: a lease taken or ended meanwhile may be missed."""
        reply = yield Command(("HSCAN", self.keys.holders, cursor, "COUNT", count))
        next_cursor, entries = reply
        pairs = entries.items() if isinstance(entries, dict) else _pairs(entries)
        leases = []
        for task_id, raw in pairs:
            # "token|worker|started_ms": the worker is between the first and the last bar
            # (a worker id may hold bars itself; the scripts compare the whole prefix).
            _, _, rest = str(raw).partition("|")
            worker = rest.rpartition("|")[0]
            if worker:
                leases.append((str(task_id), worker))
        return int(next_cursor), leases

    def lease_holders(self, limit: int) -> Op:
        """Tasks leased now per worker id (every page of `leases_page`); None when more
        than `limit` are leased: the read stops there."""
        limit = _check_count("limit", limit, 1)
        held: dict[str, int] = {}
        cursor, seen = 0, 0
        while True:
            cursor, leases = yield from self.leases_page(cursor, min(limit, 1000))
            seen += len(leases)
            if seen > limit:
                return None
            for _, worker in leases:
                held[worker] = held.get(worker, 0) + 1
            if cursor == 0:
                return held

    def publish_config(self) -> Command:
        return Command(("SET", self.keys.config, self.config.model_dump_json()))

    @staticmethod
    def eviction_policy() -> Op:
        """Redis's maxmemory-policy, from INFO memory (CONFIG GET may be forbidden)."""
        info = yield Command(("INFO", "memory"))
        return parse_eviction_policy(info)


def parse_paused(raw: str | None) -> tuple[int | None, str | None]:
    """The paused key's "<ms>|<reason>" as (since ms, reason); (None, None) when running."""
    if not raw:
        return None, None
    at, _, reason = raw.partition("|")
    try:
        return int(at), reason or None
    except ValueError:  # written by something else: still paused, time unknown
        return 0, raw


_ACTIONS = frozenset(("complete", "cancel", "retry", "dead", "release"))


def parse_eviction_policy(info: Any) -> str:
    """maxmemory_policy from an INFO reply, parsed (a dict) or raw text."""
    if isinstance(info, dict):
        value = info.get("maxmemory_policy")
        if value is None:  # a cluster client answers per node: take any node's
            nested = [v for v in info.values() if isinstance(v, dict)]
            value = nested[0].get("maxmemory_policy") if nested else None
        if value is not None:
            return str(value)
    elif isinstance(info, str | bytes):
        text = info.decode() if isinstance(info, bytes) else info
        for line in text.splitlines():
            if line.startswith("maxmemory_policy:"):
                return line.split(":", 1)[1].strip()
    raise errors.ProtocolError("INFO memory did not report maxmemory_policy")


def policy_problem(policy: str) -> str | None:
    """None when Redis keeps every key (noeviction); else what goes wrong, for a warning."""
    if policy == "noeviction":
        return None
    return (
        f"Redis runs maxmemory-policy {policy!r}: under memory pressure it may evict accepted "
        "tasks, leases, idempotency keys and the published config. kubeq requires "
        "maxmemory-policy noeviction (then a full Redis refuses writes instead, and kubeq "
        "reports RedisOutOfMemory)."
    )


def _pairs(flat: Sequence[Any]) -> Iterable[tuple[Any, Any]]:
    return ((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))


def _scored(reply: Sequence[Any]) -> list[tuple[Any, Any]]:
    """ZRANGE ... WITHSCORES, whether the client parsed it into pairs or left it flat."""
    if reply and isinstance(reply[0], list | tuple):
        return [(m, s) for m, s in reply]
    return list(_pairs(reply))


def encode_headers(headers: Mapping[str, str]) -> str:
    """A task's headers as stored (JSON object), or InvalidTask: at most MAX_HEADERS
    names of [A-Za-z0-9_.-] (1..64), string values, MAX_HEADERS_BYTES in all."""
    if not isinstance(headers, Mapping):
        raise errors.InvalidTask(f"headers must be a mapping of strings, got {headers!r:.100}")
    if len(headers) > MAX_HEADERS:
        raise errors.InvalidTask(f"headers has {len(headers)} entries; at most {MAX_HEADERS}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME_RE.match(name):
            raise errors.InvalidTask(f"header name {name!r:.100} must be 1-64 of [A-Za-z0-9_.-]")
        if not isinstance(value, str):
            raise errors.InvalidTask(f"header {name!r} must be a string, got {value!r:.100}")
    encoded = _dumps(dict(headers))
    try:
        size = utf8_size(encoded)
    except UnicodeEncodeError:
        raise errors.InvalidText("a header value is not valid UTF-8") from None
    if size > MAX_HEADERS_BYTES:
        raise errors.InvalidTask(
            f"headers are {size} bytes of JSON; the limit is {MAX_HEADERS_BYTES} bytes"
        )
    return encoded


def encode_progress(value: Any) -> str:
    """A progress value as stored: JSON (pydantic models in their JSON form), at most
    MAX_PROGRESS_BYTES; ProgressNotStorable otherwise (raised to the reporting handler)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if json_depth_exceeds(value, MAX_PAYLOAD_DEPTH):
        raise errors.ProgressNotStorable(f"progress nests deeper than {MAX_PAYLOAD_DEPTH} levels")
    try:
        encoded = _dumps(value)
        size = utf8_size(encoded)
    except (TypeError, ValueError, RecursionError) as exc:
        raise errors.ProgressNotStorable(f"progress is not JSON: {exc}") from None
    if size > MAX_PROGRESS_BYTES:
        raise errors.ProgressNotStorable(
            f"progress is {size} bytes of JSON; the limit is {MAX_PROGRESS_BYTES} bytes "
            "(report a small status, return big data as the result)"
        )
    return encoded


def parse_progress(raw: str | None) -> TaskProgress | None:
    """A stored progress entry; None when absent or damaged (status never fails on it)."""
    data = _loads_dict(raw)
    if not data:
        return None
    try:
        return TaskProgress.model_validate(data)
    except ValidationError:
        return None


def _loads_dict(raw: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
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
    parsed = _loads_dict(terminal)
    if parsed is None:
        # A damaged task record inside it: the outcome, kubeq's own JSON, is still the tail.
        head, _, tail = terminal.rpartition(',"outcome":')
        parsed = {"task": head.removeprefix('{"task":'), "outcome": _loads_dict(tail[:-1])}
    outcome = parsed.get("outcome") or {}
    task = parsed.get("task")
    try:
        status = TaskStatus(outcome.get("status", "completed"))
    except ValueError:
        status = TaskStatus.COMPLETED
    return _compose(
        task_id,
        task if isinstance(task, str) else _dumps(task),
        _dumps(outcome),
        status,
    )


def parse_status(task_id: str, reply: Sequence[Any]) -> Task:
    terminal, record, attempts, holder, dead_at, dead_info, due, cancel = reply[:8]
    progress = reply[8] if len(reply) > 8 else None
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
            status=TaskStatus.RUNNING,
            token=int(token),
            worker=worker,
            started_at=int(started),
            progress=parse_progress(progress),
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
