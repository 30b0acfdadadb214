"""`kubeq schedules`: where each of the queue's schedules (spec.schedules) stands."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import click
from rich.table import Table

from kubeq.cli.common import State, console, fmt_time, pass_state, print_json
from kubeq.protocol.ops import Command


def _read(key: str) -> Generator[Command, Any, Any]:
    reply = yield Command(("HGETALL", key))
    return reply


def _entries(raw: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(raw):
        try:
            state = json.loads(raw[name])
        except ValueError:
            state = None
        if not isinstance(state, dict):  # a foreign writer: shown, not fatal
            state = {"damaged": raw[name][:200]}
        out.append({"name": name, **state})
    return out


@click.command()
@pass_state
def schedules(state: State) -> None:
    """List the queue's schedules: last and next run, last task, fired and skipped ticks."""
    client = state.client()
    entries = _entries(client.run(_read(client.keys.schedules)) or {})
    if state.json:
        print_json(entries)
        return
    con = console()
    if not entries:
        con.print("no schedules have run on this queue (spec.schedules of its TaskQueue)")
        return
    table = Table()
    for column in ("name", "timing", "task", "last run", "next run", "last task"):
        table.add_column(column, no_wrap=True)
    table.add_column("fired", justify="right")
    table.add_column("skipped", justify="right")
    for e in entries:
        timing = str(e.get("timing", "?"))
        if e.get("tz") not in (None, "UTC"):
            timing += f" ({e['tz']})"
        if e.get("suspend"):
            timing += ", suspended"
        table.add_row(
            e["name"],
            timing,
            str(e.get("task", "?")),
            fmt_time(e.get("last_run")),
            "-" if e.get("suspend") else fmt_time(e.get("next")),
            str(e.get("last_task") or "-"),
            str(e.get("fired", 0)),
            str(e.get("skipped", 0)),
        )
    con.print(table)
