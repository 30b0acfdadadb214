"""kubeq's autoscaler vs KEDA's rule, on the same worker pool and the same traces.

Every run uses `kubeq up`'s machinery (real worker processes, a private redis-server,
bench/autoscale-queue.yaml) and replays a trace of bench/traces/ in real time. Only the
scaling decision differs:

- kubeq: scaling on throughput (`targetDrainSeconds: 2`: enough workers for the measured
  arrival rate plus draining what waits within 2 s, at the per-worker capacity measured
  by Little's law; ceil(backlog / target) until measured), the in-flight floor (which
  keeps running tasks' workers), scale-down to what the arrival rate over the manifest's
  15 s window needs (not the window's peak recommendation), cooldown to zero after the
  queue is completely empty, idle workers removed first (busy = holding a lease).
- keda: KEDA's rule as a Redis-list ScaledObject applies it: desired = ceil(list length /
  target) (waiting tasks only: in-flight work is invisible), the HPA's default 300 s
  scale-down stabilization, KEDA's default 300 s cooldown before zero, and no
  idle-first removal (the ReplicaSet removes the youngest pods, busy or not).
- keda-same-windows: KEDA's rule with the manifest's windows (15 s down, 30 s to zero),
  to separate the rule from the windows.

Traces: `bursty` (short-task bursts, one mixing in 8-15 s tasks) and `long` (a burst of
short tasks, then 12-20 s tasks: longer than the workers' 10 s termination grace period,
so a scale-down that removes a busy worker interrupts them).

Reported per run: replica-seconds, p95/p99 queue wait (from each task's own record:
started_at - due_at), the p95 wait of the trace's long tasks alone (a few percent of all
tasks: the overall p95 hides them), interrupted tasks (released by a draining worker or
reaped after a kill) and repeated claims (claims beyond one per task: work done again).

What makes the comparison fair (the same for every rule):
- Replica-seconds integrate every worker process alive, draining ones included: a Pod in
  Terminating holds its node's resources until it exits, so a rule that removes busy
  workers pays for their drain.
- The same work: after the trace ends, the pool keeps running under the same rule until
  every task of the trace has finished (at most 120 s more). `replica_seconds` is the
  integral over the trace; `replica_seconds_to_done` runs to when the last task finished
  (or the trace end, if later), so a rule that leaves work unfinished at the trace end
  cannot look cheaper for it. Waits are over every task, the late ones included.
- KEDA's rule is applied as KEDA and the HPA apply it; only kubeq's side changed.
- The queue's settings (bench/autoscale-queue.yaml, `targetDrainSeconds: 2` included) were
  chosen before the rule was measured and are not tuned to it.

Each rule runs `--repeat` times (default 5) on each trace, rules in rotated order;
bench/results/autoscale.json holds every run (with a timeline per tick: workers,
decision, recommendation, waiting, in flight, counters; `--reasons` adds each tick's
reason) and, per trace and rule, the median, min and max. Run: `python -m bench.autoscale`
(about 50 minutes on 2 cores; `--budget-seconds` caps it, `--traces`/`--rules` pick a
subset).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from bench.common import RESULTS, write
from kubeq.protocol import TaskRequest
from kubeq_operator.core.scaling import Decision, History, Observation, ScalingPolicy, Tick
from kubeq_operator.engine.autoscaler import QueueAutoscaler
from kubeq_operator.local.runner import LocalRunner

HERE = Path(__file__).parent
RULES = ("kubeq", "keda-same-windows", "keda")
KEDA_COOLDOWN = 300.0
HPA_DOWN_WINDOW = 300.0


def keda_decide(
    obs: Observation,
    policy: ScalingPolicy,
    history: History,
    current: int,
    now: float,
    down_window: float = HPA_DOWN_WINDOW,
    cooldown: float = KEDA_COOLDOWN,
) -> Decision:
    """KEDA + HPA on a Redis list: waiting tasks only; by default 300 s down, 300 s to zero."""
    listed = obs.waiting  # LLEN of the list: in-flight tasks are not in it
    raw = min(policy.max_replicas, math.ceil(listed / policy.target_backlog_per_replica))
    history = history.record(now, raw, down_window)
    active_since = history.empty_since
    if listed > 0:
        history = replace(history, empty_since=None)
    elif active_since is None:
        history = replace(history, empty_since=now)
    if current == 0:
        target = 1 if listed > policy.activation_backlog else 0
        target = max(target, raw)
    else:
        # HPA: scale up at once, scale down to the highest recommendation of the window.
        target = max(history.values_within(now, down_window))
        target = max(target, 1)  # the HPA never goes below 1; KEDA takes it to zero
        idle = history.empty_since
        if idle is not None and now - idle >= cooldown:
            target = 0
    direction = "up" if target > current else "down" if target < current else "none"
    return Decision(
        target,
        f"keda: list {listed} / {policy.target_backlog_per_replica}",
        history,
        direction,
        raw,
    )  # type: ignore[arg-type]


class KedaAutoscaler(QueueAutoscaler):
    down_window: float = HPA_DOWN_WINDOW
    cooldown: float = KEDA_COOLDOWN

    async def tick(self) -> Tick:
        observation, stats, error = await self.observe()
        current = await self.backend.replicas(self.ref)
        decision = keda_decide(
            observation,
            self.policy,
            self.history,
            current,
            self.clock(),
            self.down_window,
            self.cooldown,
        )
        self.history = decision.history
        if decision.changed:
            # No deletion costs: the ReplicaSet's default is to remove the youngest pods.
            await self.backend.set_deletion_costs(self.ref, {})
            await self.backend.scale(self.ref, decision.replicas)
        ready = await self.backend.ready_replicas(self.ref)
        return Tick(decision, current, ready, stats, error)


TRACES = ("bursty", "long")


def load_trace(name: str = "bursty") -> dict[str, Any]:
    return dict(json.loads((HERE / "traces" / f"{name}.json").read_text()))


def arrivals(trace: dict[str, Any], rng: random.Random) -> list[tuple[float, float]]:
    """(send time, task seconds) for every task of the trace, deterministic per seed."""
    out = []
    for seg in trace["segments"]:
        n = int(seg["rate"] * seg["seconds"])
        for i in range(n):
            at = seg["start"] + i / seg["rate"]
            span = (
                trace["long_seconds"]
                if rng.random() < seg["long_share"]
                else trace["short_seconds"]
            )
            out.append((at, rng.uniform(*span)))
    return sorted(out)


async def run_once(
    rule: str, trace: dict[str, Any], seed: int, keep_reasons: bool = False
) -> dict[str, Any]:
    runner = LocalRunner(HERE / "autoscale-queue.yaml", metrics_port=-1)
    await runner.start()
    if rule in ("keda", "keda-same-windows"):
        keda = KedaAutoscaler(
            runner.ref, runner.autoscaler.policy, runner.client, runner.backend, runner.metrics
        )
        if rule == "keda-same-windows":  # the windows of the manifest, as kubeq uses them
            keda.down_window = keda.policy.scale_down_stabilization_seconds
            keda.cooldown = keda.policy.cooldown_to_zero_seconds
        runner.autoscaler = keda
    elif rule != "kubeq":
        raise ValueError(f"unknown rule {rule!r}")
    end = trace_end(trace)
    samples: list[list[float]] = []
    reasons: list[tuple[float, str]] = []
    stop = asyncio.Event()
    start = time.monotonic()

    def record(snap: Any) -> None:
        # Every worker process alive counts, draining ones too: a Pod in Terminating
        # holds its node's resources until it exits.
        workers = runner.backend.workers(runner.ref)
        ready = sum(1 for w in workers if w.alive and w.stop_deadline is None)
        draining = sum(1 for w in workers if w.alive and w.stop_deadline is not None)
        d, st = snap.tick.decision, snap.stats
        at = round(time.monotonic() - start, 3)
        samples.append(
            [
                at,
                ready,
                draining,
                d.replicas,
                -1 if d.recommendation is None else d.recommendation,
                st.waiting if st else -1,
                st.in_flight if st else -1,
                st.counters.get("submitted", 0) if st else -1,
                st.counters.get("claimed", 0) if st else -1,
            ]
        )
        if keep_reasons:
            reasons.append((at, d.reason))

    loop_task = asyncio.create_task(runner.run(stop, record))
    pending = arrivals(trace, random.Random(seed))
    i = 0
    while time.monotonic() - start < end:
        now = time.monotonic() - start
        batch = []
        while i < len(pending) and pending[i][0] <= now:
            batch.append(TaskRequest(type="sleep", payload={"seconds": pending[i][1]}))
            i += 1
        if batch:
            await runner.client.submit_many(batch)
        await asyncio.sleep(0.05)
    unfinished = (await runner.client.stats()).backlog
    # The same work for every rule: the pool keeps running (same rule) until every task
    # of the trace has finished, so a rule that leaves work behind pays for finishing it.
    done_at = end
    while unfinished_now := await _unfinished(runner):
        done_at = time.monotonic() - start
        if done_at > end + DRAIN_CAP_SECONDS:
            break
        await asyncio.sleep(0.2)
    stop.set()
    await loop_task
    final = await runner.client.stats()
    long_from = trace["long_seconds"][0]
    waits, long_waits = [], []
    async for t in runner.client.finished(2000):
        wait = (t.started_at or 0) - t.due_at
        waits.append(wait)
        if t.payload["seconds"] >= long_from:
            long_waits.append(wait)
    counters = final.counters
    await runner.shutdown()
    waits.sort()
    long_waits.sort()

    def pct(q: float, values: list[int] = waits) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return {
        "rule": rule,
        "tasks": len(pending),
        "finished": len(waits),
        "unfinished_at_trace_end": unfinished,
        "unfinished_at_cap": unfinished_now,
        "done_at_seconds": round(max(done_at, end), 1),
        "replica_seconds": round(replica_seconds(samples, end), 1),
        "replica_seconds_to_done": round(replica_seconds(samples, max(done_at, end)), 1),
        "zero_wait_floor_replica_seconds": round(
            zero_wait_floor(pending, *queue_shape(), horizon=end), 1
        ),
        "queue_wait_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
        # The trace's long tasks alone (a few percent of all: the p95 above hides them).
        "long_task_wait_ms": {
            "tasks": len(long_waits),
            "p50": pct(0.5, long_waits),
            "p95": pct(0.95, long_waits),
            "max": long_waits[-1] if long_waits else float("nan"),
        },
        "interrupted": counters.get("released", 0) + counters.get("reaped", 0),
        # Claims beyond one per task: the work done again after an interruption.
        "repeated_claims": counters.get("claimed", 0)
        - counters.get("completed", 0)
        - counters.get("dead", 0)
        - final.in_flight,
        "seed": seed,
        "timeline": samples,
        **({"reasons": reasons} if keep_reasons else {}),
    }


#: The fields of each timeline sample (one per autoscaler tick).
TIMELINE_FIELDS = (
    "seconds",
    "ready",
    "draining",
    "desired",
    "recommendation",
    "waiting",
    "in_flight",
    "submitted",
    "claimed",
)
DRAIN_CAP_SECONDS = 120.0


async def _unfinished(runner: LocalRunner) -> int:
    """Tasks of the trace not finished yet: waiting, running or waiting for a retry."""
    stats = await runner.client.stats()
    return stats.backlog + stats.delayed


def trace_end(trace: dict[str, Any]) -> float:
    return float(max(s["start"] + s["seconds"] for s in trace["segments"]))


def replica_seconds(samples: list[list[float]], until: float) -> float:
    """The integral of worker processes alive (ready + draining) from 0 to `until`: each
    sample's count holds until the next sample."""
    total = 0.0
    for a, b in zip(samples, [*samples[1:], None], strict=False):
        t1 = until if b is None else min(b[0], until)
        if a[0] >= until:
            break
        total += (t1 - a[0]) * (a[1] + a[2])
    return total


def need_steps(tasks: list[tuple[float, float]], concurrency: int) -> list[tuple[float, int]]:
    """Workers the running tasks need, ceil(running / concurrency), as (time, workers)
    steps, each holding until the next, if every task of `tasks` ((arrival, seconds)
    pairs) started the moment it arrived."""
    events = sorted([(at, 1) for at, _ in tasks] + [(at + secs, -1) for at, secs in tasks])
    steps, running = [], 0
    for at, step in events:
        running += step
        steps.append((at, math.ceil(running / concurrency)))
    return steps


def zero_wait_floor(
    tasks: list[tuple[float, float]], concurrency: int, cooldown: float, horizon: float
) -> float:
    """A lower bound on the replica-seconds of any rule that starts every task of `tasks`
    ((arrival, seconds) pairs) the moment it arrives and keeps one worker for `cooldown`
    seconds after the last one finished (the manifest's cooldown to zero), counted as
    `replica_seconds_to_done` is (to the last end or the `horizon`, whichever is later):
    the `need_steps` of the tasks, as if workers started at once and running tasks could
    move between them (neither is true, so a real pool pays more). A rule that costs less
    made tasks wait, interrupted them or cut the cooldown short."""
    steps = need_steps(tasks, concurrency)
    total = sum(n * (b[0] - a) for (a, n), b in itertools.pairwise(steps))
    last = steps[-1][0] if steps else 0.0
    return total + min(cooldown, max(0.0, horizon - last))


def queue_shape(manifest: Path = HERE / "autoscale-queue.yaml") -> tuple[int, float]:
    """The pool's slots per worker and its cooldown to zero, from the benchmark's manifest."""
    spec = yaml.safe_load(manifest.read_text())["spec"]
    return int(spec["worker"]["concurrency"]), float(spec["autoscaling"]["cooldownToZeroSeconds"])


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated runs (the figures the README may quote)."""
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 1),
        "min": round(ordered[0], 1),
        "max": round(ordered[-1], 1),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per trace and rule: medians and ranges over the repetitions."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        out.setdefault(r["trace"], {}).setdefault(r["rule"], []).append(r)
    return {
        trace: {
            rule: {
                "runs": len(rs),
                "replica_seconds": spread([r["replica_seconds"] for r in rs]),
                "replica_seconds_to_done": spread([r["replica_seconds_to_done"] for r in rs]),
                "done_at_seconds": spread([r["done_at_seconds"] for r in rs]),
                "zero_wait_floor_replica_seconds": spread(
                    [r["zero_wait_floor_replica_seconds"] for r in rs]
                ),
                "p95_wait_ms": spread([r["queue_wait_ms"]["p95"] for r in rs]),
                "p99_wait_ms": spread([r["queue_wait_ms"]["p99"] for r in rs]),
                "long_task_p95_wait_ms": spread([r["long_task_wait_ms"]["p95"] for r in rs]),
                "interrupted": spread([r["interrupted"] for r in rs]),
                "repeated_claims": spread([r["repeated_claims"] for r in rs]),
                "unfinished_at_trace_end": spread([r["unfinished_at_trace_end"] for r in rs]),
            }
            for rule, rs in by_rule.items()
        }
        for trace, by_rule in out.items()
    }


def plot(
    runs: list[dict[str, Any]],
    name: str = "autoscale",
    traces_by_name: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Workers and backlog over time: the first repetition of each rule, per trace, with
    (given the traces) the workers its tasks need if each started on arrival (the lower
    bound's curve, for that repetition's seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = sorted({r["trace"] for r in runs})
    fig, axes = plt.subplots(2, len(traces), figsize=(9 * len(traces), 6), squeeze=False)
    for col, trace in enumerate(traces):
        seen: set[str] = set()
        for r in runs:
            if r["trace"] != trace or r["rule"] in seen:
                continue
            seen.add(r["rule"])
            t = [s[0] for s in r["timeline"]]
            workers = [s[1] + s[2] for s in r["timeline"]]
            axes[0][col].step(t, workers, where="post", label=r["rule"])
            backlog = [max(0, s[5]) + max(0, s[6]) for s in r["timeline"]]
            axes[1][col].plot(t, backlog, label=r["rule"])
            if traces_by_name and len(seen) == 1:
                tasks = arrivals(traces_by_name[trace], random.Random(r["seed"]))
                steps = need_steps(tasks, queue_shape()[0])
                # The highest need of each second: short tasks make it flicker in between.
                peak: dict[int, int] = {}
                for (a, n), b in zip(steps, [*steps[1:], (steps[-1][0], 0)], strict=True):
                    for sec in range(int(a), max(int(a), math.ceil(b[0]) - 1) + 1):
                        peak[sec] = max(peak.get(sec, 0), n)
                secs = sorted(peak)
                axes[0][col].step(
                    secs,
                    [peak[x] for x in secs],
                    where="post",
                    color="black",
                    linestyle=":",
                    label="needed if every task starts on arrival (highest each second)",
                )
        axes[0][col].set_title(f"trace {trace}: worker processes (first run of each rule)")
        axes[1][col].set_ylabel("backlog (waiting + in flight)")
        axes[1][col].set_xlabel("seconds")
        for ax in (axes[0][col], axes[1][col]):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="runs per rule and trace")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--traces", default=",".join(TRACES))
    parser.add_argument(
        "--skip",
        default="keda@long",
        help="rule@trace pairs not to run (KEDA's 300 s windows never scale down within"
        " the long trace, so it cannot interrupt anything there: it only costs time)",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=3600,
        help="start no repetition that could end after this (each one runs every rule)",
    )
    parser.add_argument(
        "--reasons", action="store_true", help="keep every tick's decision reason in the runs"
    )
    parser.add_argument("--out", default="autoscale", help="result file name in bench/results")
    args = parser.parse_args()
    rules, traces = args.rules.split(","), args.traces.split(",")
    skip = {tuple(pair.split("@")) for pair in args.skip.split(",") if pair}
    loaded = {name: load_trace(name) for name in traces}
    # One repetition runs every rule on every trace, rules in a rotated order, so that
    # machine noise spreads over the rules instead of landing on one of them.
    per_repetition = sum(
        sum(1 for r in rules if (r, name) not in skip)
        * (max(s["start"] + s["seconds"] for s in t["segments"]) + 30)
        for name, t in loaded.items()
    )
    started, runs = time.monotonic(), []
    for rep in range(args.repeat):
        if time.monotonic() - started + per_repetition > args.budget_seconds:
            print(f"budget reached: {rep} repetitions")
            break
        order = rules[rep % len(rules) :] + rules[: rep % len(rules)]
        for name, trace in loaded.items():
            for rule in order:
                if (rule, name) in skip:
                    continue
                r = asyncio.run(run_once(rule, trace, args.seed + rep, args.reasons))
                r["trace"] = name
                runs.append(r)
                print(
                    f"rep {rep} {name:>6} {rule:>17}: replica-seconds {r['replica_seconds']:>4,.0f}"
                    f" (to done {r['replica_seconds_to_done']:>4,.0f}"
                    f" at {r['done_at_seconds']:.0f} s)"
                    f"  p95 wait {r['queue_wait_ms']['p95']:>6,.0f} ms"
                    f"  interrupted {r['interrupted']}  repeated {r['repeated_claims']}"
                    f"  unfinished {r['unfinished_at_trace_end']}",
                    flush=True,
                )
                write(args.out, {"traces": loaded, "summary": summarize(runs), "runs": runs})
    summary = summarize(runs)
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = plot(runs, args.out, loaded)
    path = write(args.out, {"traces": loaded, "summary": summary, "runs": runs})
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
