"""`stats` (with a live `--watch` view) and `workers`."""

from __future__ import annotations

import itertools
from time import sleep
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kubeq.cli.common import (
    State,
    age_since,
    console,
    error_line,
    fmt_age,
    pass_state,
    print_json,
)
from kubeq.protocol import ConnectionFailed, QueueStats
from kubeq.text import printable

# Counters whose per-second rate the watch view shows.
RATE_COUNTERS = ("submitted", "claimed", "completed", "retried", "dead")


TYPE_COLUMNS = ("submitted", "completed", "failed", "retried", "dead")


def stats_json(
    stats: QueueStats,
    rates: dict[str, float] | None = None,
    types: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    data = stats.model_dump(mode="json")
    if types is not None:
        data["types"] = types
    # The names of kubeq.protocol.LevelStats, as on the TaskQueue status and the metrics:
    # waiting = ready + due, backlog = waiting + in flight.
    data["totals"] = {
        "ready": sum(lv.ready for lv in stats.levels),
        "due": sum(lv.due for lv in stats.levels),
        "waiting": stats.waiting,
        "delayed": stats.delayed,
        "in_flight": stats.in_flight,
        "backlog": stats.backlog,
        "oldest_age_seconds": stats.oldest_age_seconds(),
    }
    if rates is not None:
        data["rates_per_second"] = rates
    return data


def rates_between(prev: QueueStats, cur: QueueStats) -> dict[str, float]:
    seconds = (cur.at - prev.at) / 1000
    if seconds <= 0:
        return {}
    return {
        name: (cur.counters.get(name, 0) - prev.counters.get(name, 0)) / seconds
        for name in RATE_COUNTERS
    }


def types_table(types: dict[str, dict[str, int]]) -> Table:
    """Per task type totals, with the mean handler run time."""
    table = Table(title="per task type")
    table.add_column("type")
    for name in (*TYPE_COLUMNS, "mean run"):
        table.add_column(name, justify="right")
    for task_type, c in types.items():
        runs = c.get("runs", 0)
        mean = f"{c.get('duration_ms', 0) / runs:,.0f} ms" if runs else "-"
        # Type names come from producers: escaped like every other text from Redis.
        table.add_row(printable(task_type), *(f"{c.get(k, 0):,}" for k in TYPE_COLUMNS), mean)
    return table


def render_stats(
    stats: QueueStats,
    rates: dict[str, float] | None = None,
    note: str | None = None,
    types: dict[str, dict[str, int]] | None = None,
) -> RenderableType:
    table = Table()
    table.add_column("priority")
    for name in ("ready", "due", "delayed", "in-flight"):
        table.add_column(name, justify="right")
    table.add_column("oldest", justify="right")
    for lv in stats.levels:
        table.add_row(
            lv.name,
            str(lv.ready),
            str(lv.due),
            str(lv.delayed),
            str(lv.in_flight),
            age_since(lv.oldest_enqueued_at, stats.at),
        )
    due = sum(lv.due for lv in stats.levels)
    table.add_row(
        "total",
        str(stats.waiting - due),
        str(due),
        str(stats.delayed),
        str(stats.in_flight),
        fmt_age(stats.oldest_age_seconds()) if stats.waiting else "-",
        style="bold",
    )
    summary = Text(  # counter names below come from a hash any writer can add to
        f"waiting {stats.waiting}   backlog {stats.backlog} (waiting + in-flight)"
        f"   dead-letter {stats.dead}   workers {stats.workers}"
    )
    counters = Text(
        printable(
            "counters: "
            + (", ".join(f"{k} {v}" for k, v in sorted(stats.counters.items())) or "none")
        )
    )
    head = f"queue {stats.queue}"
    if stats.paused:
        since = age_since(stats.paused_at, stats.at) if stats.paused_at else "?"
        head += f"   PAUSED for {since}" + (
            f": {stats.paused_reason}" if stats.paused_reason else ""
        )
    parts: list[RenderableType] = [
        Text(printable(head), style="bold yellow" if stats.paused else ""),
        table,
        summary,
        counters,
    ]
    if types:
        parts.append(types_table(types))
    if rates:
        parts.append(Text("per second: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())))
    if note:
        parts.append(Text(note, style="yellow"))
    return Group(*parts)


def _watch(state: State, interval: float, iterations: int | None) -> None:
    client = state.client()
    prev = client.stats()  # the first read must work: errors exit as usual
    if state.json:
        print_json(stats_json(prev))
    con = console()
    live = None if state.json else Live(render_stats(prev), console=con, auto_refresh=False)
    try:
        if live is not None:
            live.start(refresh=True)
        for _ in itertools.islice(
            itertools.count(1), None if iterations is None else max(iterations - 1, 0)
        ):
            sleep(interval)
            try:
                cur = client.stats()
            except ConnectionFailed as exc:
                # A blip while watching is shown, not fatal: the next refresh retries.
                if live is not None:
                    live.update(render_stats(prev, note=f"{exc}; retrying"), refresh=True)
                else:
                    error_line(f"{exc}; retrying")
                continue
            rates = rates_between(prev, cur)
            if live is not None:
                live.update(render_stats(cur, rates), refresh=True)
            else:
                print_json(stats_json(cur, rates))
            prev = cur
    except KeyboardInterrupt:
        pass  # ctrl-C ends the watch: exit 0
    finally:
        if live is not None:
            live.stop()


@click.command()
@click.option("--watch", "-w", is_flag=True, help="Refresh a live view until ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Refresh interval of --watch.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    hidden=True,
    help="Stop --watch after N refreshes (for tests).",
)
@pass_state
def stats(state: State, watch: bool, interval: float, iterations: int | None) -> None:
    """Backlog per priority, dead letters, workers and counters of the queue.

    With --output json and --watch: one JSON document per line per refresh.
    """
    if watch:
        _watch(state, interval, iterations)
        return
    client = state.client()
    current = client.stats()
    types = client.type_stats()
    if state.json:
        print_json(stats_json(current, types=types))
    else:
        console().print(render_stats(current, types=types))


@click.command()
@pass_state
def workers(state: State) -> None:
    """The registered workers of the queue: in-flight tasks, concurrency, last heartbeat."""
    client = state.client()
    found = client.workers()
    if state.json:
        print_json([w.model_dump(mode="json") for w in found])
        return
    now = client.clock()
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("pod")
    table.add_column("in-flight", justify="right")
    table.add_column("concurrency", justify="right")
    table.add_column("state")
    table.add_column("up", justify="right")
    table.add_column("last seen", justify="right")
    for w in found:
        table.add_row(
            w.id,
            w.pod or "-",
            str(w.in_flight),
            str(w.concurrency),
            "draining" if w.draining else "serving",
            age_since(w.started_at, now),
            age_since(w.last_seen, now) + " ago",
        )
    con = console()
    if not found:
        con.print(f"no workers registered for {client.config.full_name}")
        return
    con.print(f"workers of {client.config.full_name}")
    con.print(table)
