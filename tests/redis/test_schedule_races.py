"""Issue 14: schedulers racing on one queue submit exactly one task per tick."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from kubeq.protocol import AsyncClient, QueueConfig
from kubeq_operator.core.schedules import decide, idempotency_key
from kubeq_operator.core.spec import Schedule
from kubeq_operator.engine.scheduler import run_schedules

MINUTE = 60_000
T0 = 1_800_000_000_000 // MINUTE * MINUTE


def sched(**kw: Any) -> Schedule:
    return Schedule.model_validate({"name": "tick", "task": "rollup", **kw})


def test_racing_schedulers_submit_one_task_per_tick(redis_url: str) -> None:
    async def main() -> None:
        cfg = QueueConfig(name="sched-race")
        clients = [await AsyncClient.from_url(redis_url, cfg.name, config=cfg) for _ in range(4)]
        schedules = [sched(interval_seconds=60), sched(name="hourly", cron="0 * * * *")]
        rng = random.Random(7)
        try:
            # Rounds every ~20 s for 3 hours; each round run by 4 racing schedulers whose
            # Redis-clock readings differ by up to 2 s.
            for step in range(540):
                now = T0 + step * 20_000
                await asyncio.gather(
                    *(run_schedules(c, schedules, now + rng.randrange(2000)) for c in clients)
                )
            stats = await clients[0].stats()
            # Ticks strictly after the first round's start, up to the last round.
            minutes = (539 * 20_000) // MINUTE
            # T0 is on the hour: the hourly schedule ticked at T0 + 1 h and T0 + 2 h.
            assert stats.counters["submitted"] == minutes + minutes // 60
            raw = await clients[0].redis.hget(clients[0].keys.schedules, "tick")
            state = json.loads(raw)
            last = T0 + minutes * MINUTE
            assert state["last_run"] == last
            assert (await clients[0].status(state["last_task"])).idempotency_key == (
                f"schedule:tick:{last}"
            )
        finally:
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_a_scheduler_restarted_between_submit_and_bookkeeping_does_not_submit_twice(
    redis_url: str,
) -> None:
    async def main() -> None:
        cfg = QueueConfig(name="sched-restart")
        client = await AsyncClient.from_url(redis_url, cfg.name, config=cfg)
        s = sched(interval_seconds=60)
        try:
            await run_schedules(client, [s], T0 + 1000)  # starts: nothing due yet
            # A scheduler submits the next tick, then dies before writing its bookkeeping.
            d = decide(s, T0 + 1000, T0 + MINUTE + 500)
            assert d.fire == T0 + MINUTE
            first = await client.submit("rollup", None, idempotency_key=idempotency_key(s, d.fire))
            # Its successor (or a peer) runs the round from the old bookkeeping.
            done = await run_schedules(client, [s], T0 + MINUTE + 900)
            assert done.statuses[0].last_task_id == first
            assert (await client.stats()).counters["submitted"] == 1
        finally:
            await client.close()

    asyncio.run(main())
