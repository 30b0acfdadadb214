"""spec.schedules, the shell: one scheduler round submits each due tick and keeps the
bookkeeping in Redis. Which ticks are due is decided by the pure `core.schedules.decide`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubeq.protocol import AsyncClient
from kubeq.protocol.ops import Command
from kubeq_operator.core.schedules import decide, idempotency_key, rfc3339
from kubeq_operator.core.spec import Schedule, ScheduleStatus


@dataclass
class Round:
    """What a scheduler round did, for status and metrics."""

    statuses: list[ScheduleStatus]
    fired: dict[str, int]
    skipped: dict[str, int]


async def redis_now(client: AsyncClient) -> int:
    seconds, micros = await client.run(_one(Command(("TIME",))))
    return int(seconds) * 1000 + int(micros) // 1000


def _one(cmd: Command) -> Any:
    reply = yield cmd
    return reply


async def run_schedules(
    client: AsyncClient, schedules: Sequence[Schedule], now_ms: int | None = None
) -> Round:
    """One round: submit each due tick once, record where each schedule stands."""
    now = await redis_now(client) if now_ms is None else now_ms
    key = client.keys.schedules
    names = [s.name for s in schedules]
    raw = await client.run(_one(Command(("HMGET", key, *names)))) if names else []
    result = Round([], {}, {})
    for sched, stored in zip(schedules, raw, strict=True):
        state = _state(stored)
        d = decide(sched, state.get("checked"), now)
        if d.fire is not None:
            state["last_task"] = await client.submit(
                sched.task,
                sched.payload,
                priority=sched.priority,
                idempotency_key=idempotency_key(sched, d.fire),
            )
            state["last_run"] = d.fire
        state.update(checked=d.checked_until, next=d.next_run)
        state["fired"] = int(state.get("fired", 0)) + (d.fire is not None)
        state["skipped"] = int(state.get("skipped", 0)) + d.skipped
        timing = sched.cron or f"every {sched.interval_seconds}s"
        state.update(task=sched.task, suspend=sched.suspend, timing=timing, tz=sched.timezone)
        await client.run(_one(Command(("HSET", key, sched.name, json.dumps(state)))))
        result.fired[sched.name] = int(d.fire is not None)
        result.skipped[sched.name] = d.skipped
        result.statuses.append(
            ScheduleStatus(
                name=sched.name,
                last_run=rfc3339(state.get("last_run")),
                next_run=rfc3339(None if sched.suspend else d.next_run),
                last_task_id=state.get("last_task"),
                suspended=sched.suspend or None,
            )
        )
    return result


def _state(stored: str | None) -> dict[str, Any]:
    try:
        value = json.loads(stored) if stored else {}
    except ValueError:
        return {}  # damaged bookkeeping: start over (the idempotency keys still hold)
    return value if isinstance(value, dict) else {}
