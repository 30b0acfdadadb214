"""Seeing and steering tasks: listing by state, run-now, pause/resume, filtered dead letters.

Every listing reads the queue's own structures in bounded windows (LRANGE/ZRANGE over
one level's list or set, HSCAN of the results hash), never the keyspace: a call reads at
most MAX_WINDOWS windows of at most MAX_SCRIPT_BATCH entries, then hands back a cursor.
Each task is rebuilt by `parse_status`, so a listed task reads exactly as `status()`
would show it. These are QueueOps-level generators; Client and AsyncClient run them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal, get_args

from kubeq.protocol import errors
from kubeq.protocol.models import Task, TaskPage, TaskStatus
from kubeq.protocol.ops import (
    MAX_SCRIPT_BATCH,
    TASK_TYPE_RE,
    Command,
    Op,
    Pipeline,
    QueueOps,
    ScriptCall,
    _scored,
    parse_status,
    terminal_task,
)

ListState = Literal["pending", "scheduled", "running", "retrying", "completed", "dead"]
LIST_STATES: tuple[str, ...] = get_args(ListState)
MAX_LIST_LIMIT = MAX_SCRIPT_BATCH
MAX_WINDOWS = 10  # windows read per call: bounds the work of one page, whatever filters
MIN_WINDOW = 100
MAX_REASON_LENGTH = 200
MAX_SCALE_LOG = 100  # scale decisions kept in Redis (newest first)
_CURSOR_RE = re.compile(r"^(\d{1,9}):(\d{1,20})$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _check_state(state: str) -> str:
    if state not in LIST_STATES:
        raise errors.ConfigError(f"unknown state {state!r}; states are {', '.join(LIST_STATES)}")
    return state


def _check_type(task_type: str | None) -> str | None:
    if task_type is not None and (
        not isinstance(task_type, str) or not TASK_TYPE_RE.match(task_type)
    ):
        raise errors.ConfigError(f"{task_type!r} is not a task type")
    return task_type


def check_reason(reason: str | None, what: str = "reason") -> str:
    if reason is None:
        return ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH or _CONTROL_RE.search(reason):
        raise errors.ConfigError(
            f"{what} must be text of at most {MAX_REASON_LENGTH} characters without control "
            "characters"
        )
    return reason


def parse_cursor(cursor: str | None) -> tuple[int, int]:
    """A cursor "<a>:<b>": for a level's list or set, (level index, offset); for finished
    tasks, (entries of the HSCAN batch already returned, HSCAN cursor)."""
    if cursor is None or cursor == "":
        return -1, 0
    m = _CURSOR_RE.match(cursor) if isinstance(cursor, str) else None
    if not m:
        raise errors.ConfigError(f"{cursor!r} is not a cursor returned by list_tasks")
    return int(m.group(1)), int(m.group(2))


def _matches(task: Task, state: str, task_type: str | None, reason: str | None) -> bool:
    if task.status.value != state:
        return False
    if task_type is not None and task.type != task_type:
        return False
    return reason is None or task.reason == reason


def _details(ops: QueueOps, state: str, listed: list[tuple[str, int | None]]) -> Op:
    """Rebuild each listed id as status() would (one pipeline); vanished ids are dropped."""
    k = ops.keys
    ids = [tid for tid, _ in listed]
    records, attempts, holders, infos, cancels, progress = yield Pipeline(
        (
            Command(("HMGET", k.tasks, *ids)),
            Command(("HMGET", k.attempts, *ids)),
            Command(("HMGET", k.holders, *ids)),
            Command(("HMGET", k.dead_info, *ids)),
            Command(("SMISMEMBER", k.cancelled, *ids)),
            Command(("HMGET", k.progress, *ids)),
        )
    )
    out: list[Task] = []
    for i, (tid, score) in enumerate(listed):
        dead_at = score if state == "dead" else None
        due = score if state in ("scheduled", "retrying") else None
        reply = [
            *(None, records[i], attempts[i], holders[i], dead_at, infos[i], due, cancels[i]),
            progress[i],
        ]
        try:
            out.append(parse_status(tid, reply))
        except errors.TaskNotFound:  # finished between the range read and this one
            continue
    return out


def _structure(ops: QueueOps, state: str, level: int) -> tuple[str, bool]:
    """The key to range over for `state` at `level`, and whether it is a sorted set."""
    if state == "pending":
        return ops.keys.ready(ops.levels[level]), False
    if state == "running":
        return ops.keys.leases(ops.levels[level]), True
    return ops.keys.delayed(ops.levels[level]), True


def list_tasks(
    ops: QueueOps,
    state: str,
    *,
    task_type: str | None = None,
    level: str | None = None,
    reason: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Op:
    """Up to `limit` tasks in `state` (optionally of one type, level, dead-letter reason),
    and a cursor to continue; see the module docstring for the bounds."""
    _check_state(state)
    _check_type(task_type)
    if reason is not None:
        check_reason(reason)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise errors.ConfigError(f"limit must be 1..{MAX_LIST_LIMIT}, got {limit!r}")
    a, b = parse_cursor(cursor)
    filtered = task_type is not None or reason is not None or (state == "dead" and level)
    # Unfiltered, a window the size of the page; filtered, the biggest a call may read.
    window = MAX_SCRIPT_BATCH if filtered else min(max(limit, MIN_WINDOW), MAX_SCRIPT_BATCH)
    if state == "completed":
        return (yield from _list_finished(ops, task_type, level, limit, a, b, window))
    if level is not None:
        allowed = [ops.level_index(level) - 1]  # level_index is 1-based
    elif state == "dead":
        allowed = [0]  # one set for every level
    else:
        allowed = list(range(len(ops.levels)))
    if a == -1:
        a, b = allowed[0], 0
    if a not in allowed:
        raise errors.ConfigError(f"cursor {cursor!r} does not belong to this listing")
    out: list[Task] = []
    scanned = 0
    lv, offset = a, b
    for _ in range(MAX_WINDOWS):
        if state == "dead":
            key, scored = ops.keys.dead, True
        else:
            key, scored = _structure(ops, state, lv)
        stop = offset + window - 1
        entries: list[tuple[str, int | None]]
        if scored:
            listed = _scored((yield Command(("ZRANGE", key, offset, stop, "WITHSCORES"))))
            entries = [(m, int(float(s))) for m, s in listed]
        else:
            entries = [(m, None) for m in (yield Command(("LRANGE", key, offset, stop)))]
        scanned += len(entries)
        tasks = (yield from _details(ops, state, entries)) if entries else []
        by_id = {t.id: t for t in tasks}
        for j, (tid, _) in enumerate(entries):
            t = by_id.get(tid)
            if t is None or not _matches(t, state, task_type, reason):
                continue
            if level is not None and state == "dead" and t.priority != level:
                continue
            out.append(t)
            if len(out) == limit:
                more = j + 1 < len(entries) or len(entries) == window
                nxt = f"{lv}:{offset + j + 1}" if more else _next_level(allowed, lv)
                return TaskPage(tasks=out, cursor=nxt, scanned=scanned)
        if len(entries) < window:
            following = _next_level(allowed, lv)
            if following is None:
                return TaskPage(tasks=out, cursor=None, scanned=scanned)
            lv, offset = parse_cursor(following)
        else:
            offset += window
    return TaskPage(tasks=out, cursor=f"{lv}:{offset}", scanned=scanned)


def _next_level(allowed: list[int], lv: int) -> str | None:
    i = allowed.index(lv)
    return f"{allowed[i + 1]}:0" if i + 1 < len(allowed) else None


def _list_finished(
    ops: QueueOps,
    task_type: str | None,
    level: str | None,
    limit: int,
    skip: int,
    scan: int,
    window: int,
) -> Op:
    if level is not None:
        ops.level_index(level)  # an unknown level is an error, not an empty listing
    skip = max(skip, 0)
    out: list[Task] = []
    scanned = 0
    for _ in range(MAX_WINDOWS):
        next_scan, entries = yield Command(("HSCAN", ops.keys.results, scan, "COUNT", window))
        pairs = list(entries.items()) if isinstance(entries, dict) else list(_pairs(entries))
        scanned += len(pairs)
        for j, (tid, raw) in enumerate(pairs[skip:], start=skip):
            t = terminal_task(tid, raw)
            if t.status != TaskStatus.COMPLETED:
                continue
            if (task_type is not None and t.type != task_type) or (
                level is not None and t.priority != level
            ):
                continue
            out.append(t)
            if len(out) == limit:
                if j + 1 < len(pairs):
                    return TaskPage(tasks=out, cursor=f"{j + 1}:{scan}", scanned=scanned)
                nxt = int(next_scan)
                return TaskPage(tasks=out, cursor=f"0:{nxt}" if nxt else None, scanned=scanned)
        skip = 0
        scan = int(next_scan)
        if scan == 0:
            return TaskPage(tasks=out, cursor=None, scanned=scanned)
    return TaskPage(tasks=out, cursor=f"0:{scan}", scanned=scanned)


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def run_now(ops: QueueOps, task_id: str) -> Op:
    """Make a scheduled or retrying task due now; False when it is in neither state."""
    if not isinstance(task_id, str) or not task_id or len(task_id) > 1024:
        raise errors.ConfigError(f"{task_id!r} is not a task id")
    k = ops.keys
    keys = [k.wake, k.counters]
    for name in ops.levels:
        keys += [k.ready(name), k.delayed(name)]
    found = yield ScriptCall("run_now", keys, [len(ops.levels), task_id])
    return int(found) > 0


def set_paused(ops: QueueOps, paused: bool, now: int, reason: str | None = None) -> Op:
    """Pause (claims take nothing new) or resume the queue; True when the state changed."""
    why = check_reason(reason)
    k = ops.keys
    args: list[str | int | float] = [ops._now_arg(now), "pause" if paused else "resume", why]
    changed = yield ScriptCall("pause", [k.paused, k.counters, k.wake], args)
    return bool(int(changed))


def act_on_dead(
    ops: QueueOps,
    action: Literal["requeue", "purge"],
    *,
    reason: str | None = None,
    task_type: str | None = None,
    limit: int | None = None,
) -> Op:
    """Requeue or purge the dead letters matching `reason` and `task_type`; their ids.

    Walks the dead-letter set oldest first in windows of MAX_SCRIPT_BATCH; matching ids
    leave the set as each window is acted on, so the offset advances by those that stay.
    """
    _check_type(task_type)
    if reason is not None:
        check_reason(reason)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise errors.ConfigError(f"limit must be a positive integer, got {limit!r}")
    offset = 0
    done: list[str] = []
    while limit is None or len(done) < limit:
        page = yield from list_tasks(
            ops,
            "dead",
            task_type=task_type,
            reason=reason,
            limit=MAX_SCRIPT_BATCH,
            cursor=f"0:{offset}",
        )
        ids = [t.id for t in page.tasks]
        if limit is not None:
            ids = ids[: limit - len(done)]
        if ids:
            if action == "requeue":
                done += yield from ops.requeue_dead(ids)
            else:
                yield from ops.purge_dead(ids)
                done += ids
        if page.cursor is None:
            break
        _, end = parse_cursor(page.cursor)
        offset = end - len(ids)
    return done


def record_scale(ops: QueueOps, event: dict[str, Any]) -> Op:
    """Keep a scale decision (JSON) in the queue's capped log, newest first."""
    body = json.dumps(event, separators=(",", ":"), default=str)
    yield Pipeline(
        (
            Command(("LPUSH", ops.keys.scale_log, body)),
            Command(("LTRIM", ops.keys.scale_log, 0, MAX_SCALE_LOG - 1)),
        )
    )


def scale_log(ops: QueueOps, limit: int = 20) -> Op:
    """The newest `limit` scale decisions; entries that do not parse are skipped."""
    limit = max(1, min(int(limit), MAX_SCALE_LOG))
    raw = yield Command(("LRANGE", ops.keys.scale_log, 0, limit - 1))
    out: list[dict[str, Any]] = []
    for item in raw:
        try:
            value = json.loads(item)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


TYPE_COUNTERS = ("submitted", "completed", "failed", "retried", "dead", "cancelled", "runs")


def tally(ops: QueueOps, counts: dict[tuple[str, str], int]) -> Op:
    """Add per-type counts {(task type, counter): increment} (the worker's outcomes)."""
    items = [(t, c, n) for (t, c), n in counts.items()]
    for start in range(0, len(items), MAX_SCRIPT_BATCH):
        part = items[start : start + MAX_SCRIPT_BATCH]
        args: list[str | int | float] = [len(part)]
        for t, c, n in part:
            args += [t, c, int(n)]
        yield ScriptCall("tally", [ops.keys.type_counters], args)


def type_stats(ops: QueueOps) -> Op:
    """{task type: {counter: total}}: submitted, completed, failed, retried, dead,
    cancelled, runs and duration_ms (the sum of handler run times), as counted so far."""
    raw = yield Command(("HGETALL", ops.keys.type_counters))
    pairs = raw.items() if isinstance(raw, dict) else _pairs(raw)
    out: dict[str, dict[str, int]] = {}
    for field, value in pairs:
        task_type, sep, counter = str(field).rpartition("|")
        if not sep:
            continue
        try:
            out.setdefault(task_type, {})[counter] = int(value)
        except ValueError:  # a foreign writer: skip the field, keep the rest
            continue
    return dict(sorted(out.items()))
