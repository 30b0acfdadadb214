"""`kubeq demo telemetry`: the telemetry pipeline end to end on this machine.

A simulated device fleet sends a quiet → burst → quiet traffic profile to the telemetry
queue run by `kubeq up`'s machinery. The pool scales up on the burst, drains it, and
scales back down; afterwards the demo accounts for every task (completed or dead-lettered,
each exactly once), prints wait percentiles measured from the tasks' own records, and
writes a plot of backlog and workers over time.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubeq.examples.simulator import DeviceFleet, Phase, burst_profile
from kubeq.protocol import AsyncClient, TaskStatus
from kubeq_operator.local.runner import LocalRunner, Snapshot


@dataclass
class Sample:
    t: float
    backlog: int
    waiting: int  # ready + due
    in_flight: int
    desired: int
    workers: int
    completed: int
    dead: int


@dataclass
class DemoReport:
    submitted: int  # by the fleet and by the queue's schedules
    scheduled: int  # of which by schedules (spec.schedules: the fleet rollup)
    completed: int
    dead_lettered: int
    dead_reasons: dict[str, int]
    retried: int
    unaccounted: int  # submitted but neither completed nor dead: must be 0
    duplicates: int  # tasks recorded completed more than once: must be 0
    released_by_scale_down: int
    reaped: int
    duration_seconds: float
    throughput_per_second: float
    queue_wait_ms: dict[str, float]
    max_workers: int
    final_workers: int
    min_replicas: int
    scale_decisions: list[tuple[float, str]]
    anomalies_flagged: int
    fleet: dict[str, int]
    timeline: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.unaccounted == 0 and self.duplicates == 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def drive(
    client: AsyncClient, fleet: DeviceFleet, phases: list[Phase], on_phase: Callable[[Phase], None]
) -> int:
    """Submit the profile in 100 ms slots; returns how many tasks were accepted."""
    submitted = 0
    slot = 0.1
    loop = asyncio.get_running_loop()
    for phase in phases:
        on_phase(phase)
        owed = 0.0
        end = loop.time() + phase.seconds
        next_slot = loop.time()
        while loop.time() < end:
            owed += phase.rate * slot
            n = int(owed)
            owed -= n
            if n:
                ids = await client.submit_many(fleet.next_tasks(n, int(time.time() * 1000)))
                submitted += len(ids)
            next_slot += slot
            await asyncio.sleep(max(0.0, next_slot - loop.time()))
    return submitted


async def account(client: AsyncClient, submitted: int) -> dict[str, Any]:
    """Read every finished task: what completed, what is dead and why, queue waits."""
    waits: list[float] = []
    finished: list[int] = []
    started: list[int] = []
    async for task in client.finished(page_size=2000):
        if task.status == TaskStatus.COMPLETED:
            waits.append((task.started_at or 0) - task.due_at)
            finished.append(task.finished_at or 0)
            started.append(task.created_at)
    completed = len(waits)
    dead = await client.dead_letters(limit=1_000_000)
    # The fleet's tasks plus those the queue's schedules submitted (the fleet rollup).
    stats = await client.stats()
    total = max(submitted, stats.counters.get("submitted", 0))
    reasons = Counter(d.task.reason or "unknown" for d in dead)
    span = (max(finished) - min(started)) / 1000 if finished else 0.0
    return {
        "completed": completed,
        "dead": len(dead),
        "reasons": dict(reasons),
        "waits": waits,
        "span": span,
        "counters": stats.counters,
        "submitted": total,
        "scheduled": total - submitted,
        "unaccounted": total - completed - len(dead),
        "duplicates": stats.counters.get("completed", 0) - completed,
    }


def plot(report: DemoReport, phases: list[Phase], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = report.timeline
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(
        [s.t for s in tl],
        [s.backlog for s in tl],
        color="tab:blue",
        label="backlog (ready + due + in flight)",
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("tasks", color="tab:blue")
    ax2 = ax.twinx()
    ax2.step(
        [s.t for s in tl],
        [s.desired for s in tl],
        where="post",
        color="tab:red",
        label="desired workers",
    )
    ax2.step(
        [s.t for s in tl],
        [s.workers for s in tl],
        where="post",
        color="tab:orange",
        linestyle="--",
        label="ready workers",
    )
    ax2.set_ylabel("workers", color="tab:red")
    ax2.set_ylim(0, max([s.desired for s in tl] + [1]) + 1)
    start = 0.0
    for phase in phases:
        if phase.name == "burst":
            ax.axvspan(start, start + phase.seconds, color="grey", alpha=0.12, label="burst")
        start += phase.seconds
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax.set_title("kubeq demo telemetry: burst → scale up → drain → scale down")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run_demo(
    manifest: Path,
    *,
    devices: int,
    scale: float,
    seed: int,
    out_dir: Path,
    settle_timeout: float,
    on_snapshot: Callable[[Snapshot], None],
    on_phase: Callable[[Phase], None],
    phases: list[Phase] | None = None,
) -> DemoReport:
    runner = LocalRunner(manifest)
    await runner.start()
    timeline: list[Sample] = []

    def record(snap: Snapshot) -> None:
        stats = snap.stats
        if stats is not None:
            timeline.append(
                Sample(
                    round(snap.at, 2),
                    stats.backlog,
                    stats.waiting,
                    stats.in_flight,
                    snap.tick.decision.replicas,
                    snap.tick.ready,
                    stats.counters.get("completed", 0),
                    stats.dead,
                )
            )
        on_snapshot(snap)

    stop = asyncio.Event()
    loop_task = asyncio.create_task(runner.run(stop, record))
    fleet = DeviceFleet(devices, random.Random(seed))
    phases = phases or burst_profile(scale)
    minimum = runner.spec.autoscaling.min_replicas
    try:
        submitted = await drive(runner.client, fleet, phases, on_phase)
        # Wait for the drain and the scale-down back to the minimum.
        deadline = time.monotonic() + settle_timeout
        while time.monotonic() < deadline:
            last = timeline[-1] if timeline else None
            if (
                last
                and last.backlog == 0
                and last.desired == minimum
                and last.workers == minimum
                and runner.backend.terminating(runner.ref) == 0
            ):
                break
            await asyncio.sleep(0.5)
        stop.set()
        await loop_task
        acc = await account(runner.client, submitted)
        anomalies = await runner.client.redis.llen(
            f"telemetry:{{{runner.ref.namespace}/{runner.ref.name}}}:anomalies"
        )
    finally:
        stop.set()
        await runner.shutdown()
    waits = acc["waits"] or [0.0]
    counters = acc["counters"]
    report = DemoReport(
        submitted=acc["submitted"],
        scheduled=acc["scheduled"],
        completed=acc["completed"],
        dead_lettered=acc["dead"],
        dead_reasons=acc["reasons"],
        retried=counters.get("retried", 0),
        unaccounted=acc["unaccounted"],
        duplicates=acc["duplicates"],
        released_by_scale_down=counters.get("released", 0),
        reaped=counters.get("reaped", 0),
        duration_seconds=round(timeline[-1].t if timeline else 0.0, 1),
        throughput_per_second=round(acc["completed"] / acc["span"], 1) if acc["span"] else 0.0,
        queue_wait_ms={
            f"p{int(q * 100)}": round(percentile(waits, q), 1) for q in (0.5, 0.95, 0.99)
        }
        | {"max": float(max(waits))},
        max_workers=max((s.workers for s in timeline), default=0),
        final_workers=timeline[-1].workers if timeline else 0,
        min_replicas=minimum,
        scale_decisions=list(runner.decisions),
        anomalies_flagged=int(anomalies),
        fleet=dict(fleet.counts),
        timeline=timeline,
    )
    await asyncio.to_thread(write_outputs, report, phases, out_dir)
    return report


def write_outputs(report: DemoReport, phases: list[Phase], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo-telemetry.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    plot(report, phases, out_dir / "demo-telemetry.png")
