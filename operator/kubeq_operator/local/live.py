"""The terminal view of `kubeq up`: a rich live panel, or one plain line per tick."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kubeq_operator.engine.backend import QueueRef
from kubeq_operator.local.runner import Snapshot


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def _rate(per_second: float | None) -> str:
    return "-" if per_second is None else f"{per_second:,.0f}/s"


def render(
    ref: QueueRef, snap: Snapshot, metrics_port: int | None = None, dashboard: str | None = None
) -> RenderableType:
    tick, stats = snap.tick, snap.stats
    paused = " · PAUSED (kubeq resume)" if stats is not None and stats.paused else ""
    levels = Table(title=f"queue {ref}{paused}", expand=True)
    for col in ("priority", "ready", "due", "delayed", "in flight", "backlog"):
        levels.add_column(col, justify="right" if col != "priority" else "left")
    if stats is not None:
        for lv in stats.levels:
            levels.add_row(
                lv.name,
                f"{lv.ready:,}",
                f"{lv.due:,}",
                f"{lv.delayed:,}",
                f"{lv.in_flight:,}",
                f"{lv.backlog:,}",
            )
    # Two columns, so that every figure fits (not cut) in an 80-column terminal.
    summary = Table.grid(padding=(0, 3))
    counters = stats.counters if stats else {}
    summary.add_row(
        f"workers [bold]{tick.ready}[/] ready / [bold]{tick.decision.replicas}[/] desired"
        + (f" ({snap.terminating} draining)" if snap.terminating else ""),
        "",
    )
    summary.add_row(f"submitted {_rate(snap.submit_rate)}", f"throughput {_rate(snap.throughput)}")
    summary.add_row(
        f"queue wait p50 {_ms(snap.wait_p50)}",
        f"p99 {_ms(snap.wait_p99)}",
    )
    summary.add_row(
        f"completed {counters.get('completed', 0):,}   retried {counters.get('retried', 0):,}",
        f"dead-letter {stats.dead if stats else 0:,}"
        + ("" if stats else "   [red]Redis unreachable[/]"),
    )
    crash = snap.crashes
    if crash.count:
        wait = f", next start in {crash.restart_in:.0f} s" if crash.restart_in >= 1 else ""
        summary.add_row(f"[red]worker crashes {crash.count}{wait}[/]", "")
    crash_line = (
        Text(f"last crash: {crash.last_error}", style="red", overflow="fold")
        if crash.count
        else Text("")
    )
    decisions = Table(title="recent scale decisions", expand=True, show_header=False)
    decisions.add_column("t", justify="right", width=8)
    decisions.add_column("decision")
    for at, text in snap.recent[-6:]:
        decisions.add_row(f"{at:6.1f} s", text)
    footer = f"operator metrics on 127.0.0.1:{metrics_port}/metrics · " if metrics_port else ""
    if dashboard:
        footer = f"dashboard {dashboard} · " + footer
    return Panel(
        Group(levels, summary, crash_line, decisions),
        title="kubeq up",
        subtitle=f"{footer}Ctrl-C drains and stops",
    )


def line(ref: QueueRef, snap: Snapshot) -> str:
    stats = snap.stats
    backlog = "unreachable" if stats is None else f"{stats.backlog}"
    tp = "-" if snap.throughput is None else f"{snap.throughput:.0f}/s"
    sub = "-" if snap.submit_rate is None else f"{snap.submit_rate:.0f}/s"
    crash = snap.crashes
    crashes = f" crashes={crash.count} last_crash={crash.last_error!r}" if crash.count else ""
    return (
        f"t={snap.at:6.1f}s queue={ref} backlog={backlog} "
        f"workers={snap.tick.ready}/{snap.tick.decision.replicas} submitted={sub} throughput={tp} "
        f"wait_p99={_ms(snap.wait_p99)} decision={snap.tick.decision.reason!r}{crashes}"
    )
