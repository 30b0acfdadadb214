"""spec.schedules: which ticks are due. Pure, time a parameter; `engine/scheduler.py` submits.

Exactly one task per tick, whoever runs the scheduler (several operator replicas, `kubeq
up`, a scheduler restarted between its submit and its bookkeeping): each tick is submitted
with the idempotency key `schedule:<name>:<tick ms>`, so a second submit of the same tick,
from anyone, within the queue's idempotency TTL returns the first task's id and enqueues
nothing. The bookkeeping in Redis (`schedules` hash: last tick checked, last run, last task
id) only says where to look next; it is not what makes a tick fire once. `now` is Redis's
clock, so schedulers on pods whose clocks disagree agree on which ticks are due.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim

from kubeq_operator.core.spec import Schedule

#: At most this many ticks are looked at per schedule and round (a long outage of a
#: per-second schedule is then skipped in bounded steps, never all in memory).
MAX_TICKS = 1000


def _dt(ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone)


def _ticks_after(sched: Schedule, after_ms: int) -> Iterator[int]:
    """The schedule's ticks strictly after `after_ms`, in order, as epoch ms."""
    if sched.interval_seconds is not None:
        step = sched.interval_seconds * 1000
        t = (after_ms // step + 1) * step  # aligned to the epoch: every scheduler agrees
        while True:
            yield t
            t += step
    assert sched.cron is not None
    zone = ZoneInfo(sched.timezone)
    for dt in CronSim(sched.cron, _dt(after_ms, zone)):
        ms = int(dt.timestamp() * 1000)
        if ms > after_ms:  # CronSim works in whole minutes and may return after_ms itself
            yield ms


def ticks_between(
    sched: Schedule, after_ms: int, until_ms: int, limit: int = MAX_TICKS
) -> list[int]:
    """Ticks t with after_ms < t <= until_ms, at most `limit` (the earliest)."""
    out: list[int] = []
    for t in _ticks_after(sched, after_ms):
        if t > until_ms or len(out) >= limit:
            break
        out.append(t)
    return out


def next_tick(sched: Schedule, after_ms: int) -> int:
    return next(_ticks_after(sched, after_ms))


@dataclass(frozen=True)
class Decision:
    fire: int | None  # the tick to submit now
    skipped: int  # due ticks not submitted (missed, or folded into `fire`)
    checked_until: int  # ticks up to here are handled
    next_run: int  # the next tick after checked_until


def decide(sched: Schedule, checked_until: int | None, now_ms: int) -> Decision:
    """What one scheduler round does for one schedule. Pure.

    A tick at most startingDeadlineSeconds late is on time and fires. Later ticks are
    missed: `Skip` drops them; `RunOnce` fires one task for all of them, when the latest is
    at most catchUpLimitSeconds old. A schedule never checked starts now (nothing from
    before its creation fires); a suspended one fires nothing and skips its ticks.
    """
    if checked_until is None:
        return Decision(None, 0, now_ms, next_tick(sched, now_ms))
    if checked_until >= now_ms:  # another scheduler got further: nothing new is due
        return Decision(None, 0, checked_until, next_tick(sched, checked_until))
    due = ticks_between(sched, checked_until, now_ms)
    until = due[-1] if len(due) == MAX_TICKS else now_ms
    fire: int | None = None
    if due and not sched.suspend:
        latest = due[-1]
        late = now_ms - latest
        if late <= sched.starting_deadline_seconds * 1000 or (
            sched.missed_runs == "RunOnce" and late <= sched.catch_up_limit_seconds * 1000
        ):
            fire = latest
    return Decision(fire, len(due) - (fire is not None), until, next_tick(sched, until))


def idempotency_key(sched: Schedule, tick_ms: int) -> str:
    return f"schedule:{sched.name}:{tick_ms}"


def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
