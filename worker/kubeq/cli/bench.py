"""`bench`: a load generator that reports only what it measured.

Submission throughput is timed around the submit calls. With --wait-completion, the
bench listens on the queue's done channel (subscribed before the first submit) and
times when each of its tasks was announced finished; latencies come from the finished
tasks' own records (finished_at - created_at end to end, started_at - due_at queue
wait), read for a sample of the tasks.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from collections import Counter
from typing import Any

import click
import redis.exceptions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kubeq.cli.common import (
    CliError,
    ExitCode,
    State,
    console,
    error_line,
    pass_state,
    print_json,
)
from kubeq.protocol import Client, QueueFull, TaskNotFound, TaskRequest, TaskStatus

BENCH_QUEUE = "kubeq-bench"  # the bench's own queue, unless one is named explicitly
STALL_SECONDS = 2.0  # no announcement for this long: look the pending tasks up directly
POLL_LIMIT = 200  # tasks looked up per stall check


class DoneListener:
    """Collects (task id, monotonic time) of every task the queue announces finished."""

    def __init__(self, client: Client) -> None:
        self._pubsub = client.redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(client.keys.done_channel)
        self.seen: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubeq-bench-done", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._pubsub.get_message(timeout=0.2)
                if msg is not None and msg.get("type") == "message":
                    at = time.monotonic()
                    for task_id in str(msg["data"]).split():
                        self.seen.put((task_id, at))
        except (redis.exceptions.RedisError, OSError, ValueError):
            pass  # announcements stop; the stall check looks tasks up instead

    def drain(self, into: dict[str, float], wait: float = 0.0) -> None:
        try:
            item = self.seen.get(timeout=wait) if wait > 0 else self.seen.get_nowait()
            while True:
                into.setdefault(*item)
                item = self.seen.get_nowait()
        except queue.Empty:
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()


def percentiles(values: list[float]) -> dict[str, float] | None:
    """Nearest-rank p50/p95/p99 and max; None without values."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": ordered[-1]}


def _payload(size: int) -> Any:
    # {"pad":"..."} encodes to `size` bytes (10 bytes at least); 0 means no payload.
    return {"pad": "x" * max(size - 10, 0)} if size else None


def _submit_all(
    client: Client,
    request: TaskRequest,
    tasks: int,
    rate: float,
    batch: int,
    progress: Progress,
    listener: DoneListener | None,
    done: dict[str, float],
) -> tuple[list[str], float, float]:
    """Submit `tasks` copies of `request`, paced to `rate`; (ids, start, seconds)."""
    bar = progress.add_task("submitted", total=tasks)
    ids: list[str] = []
    start = time.monotonic()
    while len(ids) < tasks:
        if rate > 0:
            ahead = start + len(ids) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        size = min(batch, tasks - len(ids))
        try:
            ids.extend(client.submit_many([request] * size, chunk_size=size))
        except QueueFull as exc:
            raise CliError(
                f"{exc} (after {len(ids)} of {tasks} tasks were submitted)", ExitCode.QUEUE_FULL
            ) from None
        progress.update(bar, completed=len(ids))
        if listener is not None:
            listener.drain(done)
    return ids, start, time.monotonic() - start


def _wait_all(
    client: Client,
    ids: list[str],
    listener: DoneListener,
    done: dict[str, float],
    timeout: float,
    progress: Progress,
) -> set[str]:
    """Wait until every task is announced finished or `timeout` passes; the unfinished."""
    pending = set(ids)
    bar = progress.add_task("finished", total=len(ids))
    deadline = time.monotonic() + timeout
    last_change = time.monotonic()
    while pending and time.monotonic() < deadline:
        before = len(pending)
        listener.drain(done, wait=0.2)
        pending.difference_update([t for t in list(pending) if t in done])
        if time.monotonic() - last_change > STALL_SECONDS:
            # A safety net (a dropped subscription): look the tasks up. Their finish time
            # is then when we looked, not when they finished.
            now = time.monotonic()
            for task_id in list(pending)[:POLL_LIMIT]:
                try:
                    finished = client.status(task_id).status.terminal
                except TaskNotFound:
                    finished = False
                if finished:
                    done.setdefault(task_id, now)
                    pending.discard(task_id)
            last_change = time.monotonic()
        if len(pending) != before:
            last_change = time.monotonic()
            progress.update(bar, completed=len(ids) - len(pending))
    return pending


def _latencies(client: Client, finished: list[str], sample: int) -> dict[str, Any]:
    """Latencies from the records of (a sample of) the finished tasks, in ms."""
    chosen = finished if len(finished) <= sample else random.sample(finished, sample)
    outcomes: Counter[str] = Counter()
    end_to_end: list[float] = []
    queue_wait: list[float] = []
    for task_id in chosen:
        try:
            task = client.status(task_id)
        except TaskNotFound:
            outcomes["expired"] += 1
            continue
        outcomes[task.status.value] += 1
        if task.status != TaskStatus.COMPLETED or task.finished_at is None:
            continue
        end_to_end.append(float(task.finished_at - task.created_at))
        if task.started_at is not None:
            queue_wait.append(float(task.started_at - task.due_at))
    return {
        "sampled": len(chosen),
        "outcomes": dict(outcomes),
        "end_to_end_ms": percentiles(end_to_end),
        "queue_wait_ms": percentiles(queue_wait),
    }


@click.command()
@click.option(
    "--tasks", type=click.IntRange(min=1), default=1000, show_default=True, help="Tasks to submit."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Target submissions per second (0 = as fast as possible).",
)
@click.option("--type", "task_type", default="noop", show_default=True, help="Task type.")
@click.option(
    "--payload-size",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="BYTES",
    help="Encoded payload size (0 = no payload).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1, max=10_000),
    default=100,
    show_default=True,
    help="Tasks per submit call.",
)
@click.option("--priority", "-p", help="Priority level (default: the queue's default).")
@click.option(
    "--wait-completion",
    is_flag=True,
    help="Wait for the tasks to finish; report throughput and latency.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="With --wait-completion: give up after SECONDS (exit 4).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Finished tasks whose records are read for latency percentiles.",
)
@pass_state
def bench(
    state: State,
    tasks: int,
    rate: float,
    task_type: str,
    payload_size: int,
    batch: int,
    priority: str | None,
    wait_completion: bool,
    timeout: float,
    sample: int,
) -> None:
    """Submit a burst of tasks and measure submission (and completion) throughput.

    It benches its own queue, kubeq-bench, unless -q/--queue (or KUBEQ_QUEUE) names one:
    a real queue's workers may have no handler for --type, and would dead-letter every
    task. Something must run the tasks for --wait-completion, e.g.
    `kubeq -q kubeq-bench worker --app kubeq.examples.bench:app`. Bench tasks that end
    dead-lettered are removed from the dead-letter set and make the bench fail (exit 1).
    """
    if state.origin.get("queue") not in ("flag", "env"):
        state.queue = BENCH_QUEUE
    client = state.client()
    if wait_completion and state.queue == BENCH_QUEUE and not client.workers():
        raise CliError(
            f"no worker serves queue {client.config.full_name}, so --wait-completion would "
            f"only time out: start one (kubeq -q {BENCH_QUEUE} worker --app "
            "kubeq.examples.bench:app), or name a served queue with -q",
            ExitCode.USAGE,
        )
    request = TaskRequest(type=task_type, payload=_payload(payload_size), priority=priority)
    client.ops.encode_task(request, client.clock())  # fail fast: unknown priority, size
    listener = DoneListener(client) if wait_completion else None
    done: dict[str, float] = {}
    con = console(stderr=True)
    report: dict[str, Any] = {
        "queue": client.config.full_name,
        "tasks": tasks,
        "type": task_type,
        "priority": priority or client.config.default_level,
        "payload_bytes": payload_size,
        "batch": batch,
        "target_rate": rate or None,
    }
    unfinished: set[str] = set()
    try:
        with Progress(
            TextColumn("{task.description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=con,
            disable=not con.is_terminal,
        ) as progress:
            ids, start, seconds = _submit_all(
                client, request, tasks, rate, batch, progress, listener, done
            )
            report["submit"] = {
                "seconds": seconds,
                "tasks_per_second": tasks / seconds if seconds > 0 else None,
            }
            if listener is not None:
                unfinished = _wait_all(client, ids, listener, done, timeout, progress)
    finally:
        if listener is not None:
            listener.close()
    report["completion"] = None
    dead: tuple[int, list[str]] = (0, [])
    if wait_completion:
        finished = [t for t in ids if t not in unfinished]
        span = max((done[t] for t in finished), default=start) - start
        report["completion"] = {
            "finished": len(finished),
            "unfinished": len(unfinished),
            "seconds": span,
            "tasks_per_second": len(finished) / span if finished and span > 0 else None,
            **_latencies(client, finished, sample),
        }
        dead = _remove_dead(client, finished)
        report["completion"]["dead_lettered"] = dead[0]
    if state.json:
        print_json(report)
    else:
        _print_report(report)
    if dead[0]:
        why = f" ({', '.join(dead[1])})" if dead[1] else ""
        raise CliError(
            f"{dead[0]} of the {tasks} bench tasks were dead-lettered{why}: does every worker "
            f"of {client.config.full_name} have a handler for {task_type!r}? They were removed "
            "from the dead-letter set",
            ExitCode.FAILED,
        )
    if unfinished:
        error_line(f"{len(unfinished)} of {tasks} tasks had not finished after {timeout}s")
        raise click.exceptions.Exit(ExitCode.TIMEOUT)


def _remove_dead(client: Client, finished: list[str]) -> tuple[int, list[str]]:
    """Take the bench's own dead-lettered tasks out of the dead-letter set: (how many, the
    reasons seen). A bench must not leave a real queue's dead-letter set filled."""
    reasons: Counter[str] = Counter()
    removed = 0
    for i in range(0, len(finished), 1000):
        chunk = finished[i : i + 1000]
        if not reasons:  # one record's reason is enough to say why
            for letter in client.dead_letters(0, 10):
                if letter.task.id in set(chunk) and letter.task.reason:
                    reasons[letter.task.reason] += 1
        removed += client.purge_dead(chunk, limit=len(chunk))
    return removed, sorted(reasons)


def _print_report(report: dict[str, Any]) -> None:
    heading = (
        f"bench {report['queue']}: {report['tasks']} x {report['type']} (priority "
        f"{report['priority']}, payload {report['payload_bytes']} B, batch {report['batch']})"
    )
    table = Table()
    table.add_column("measure")
    table.add_column("value", justify="right")
    sub = report["submit"]
    table.add_row("submit time", f"{sub['seconds']:.3f} s")
    if sub["tasks_per_second"] is not None:
        table.add_row("submitted / s", f"{sub['tasks_per_second']:,.0f}")
    comp = report["completion"]
    if comp is not None:
        table.add_row("finished", f"{comp['finished']} of {report['tasks']}")
        table.add_row("first submit → last finished", f"{comp['seconds']:.3f} s")
        if comp["tasks_per_second"] is not None:
            table.add_row("finished / s", f"{comp['tasks_per_second']:,.0f}")
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(comp["outcomes"].items()))
        table.add_row("sampled records", f"{comp['sampled']} ({outcomes or 'none'})")
        table.add_row("dead-lettered (removed)", f"{comp['dead_lettered']}")
        for key, label in (("end_to_end_ms", "end to end"), ("queue_wait_ms", "queue wait")):
            if comp[key] is not None:
                table.add_row(
                    f"{label} ms p50/p95/p99/max",
                    "/".join(f"{comp[key][q]:.0f}" for q in ("p50", "p95", "p99", "max")),
                )
    con = console()
    con.print(heading)
    con.print(table)
