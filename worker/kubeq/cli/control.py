"""`tasks list`, `retry`, `pause` and `resume`: seeing and steering the queue's tasks."""

from __future__ import annotations

import click
from rich.table import Table

from kubeq.cli.common import (
    CliError,
    ExitCode,
    State,
    age_since,
    console,
    echo,
    pass_state,
    print_json,
)
from kubeq.protocol.browse import LIST_STATES, MAX_LIST_LIMIT, parse_cursor
from kubeq.text import printable


def _cursor(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from kubeq.protocol import ConfigError

    try:
        parse_cursor(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.group()
def tasks() -> None:
    """List the queue's tasks by state, type and priority level."""


@tasks.command("list")
@click.option(
    "--state",
    "state_",
    type=click.Choice(LIST_STATES),
    default="pending",
    show_default=True,
)
@click.option("--type", "task_type", metavar="T", help="Only tasks of this type.")
@click.option("--level", metavar="L", help="Only tasks of this priority level.")
@click.option("--reason", metavar="R", help="Dead letters only: with this reason.")
@click.option("--limit", type=click.IntRange(1, MAX_LIST_LIMIT), default=50, show_default=True)
@click.option(
    "--cursor", metavar="C", callback=_cursor, help="Continue where a previous listing stopped."
)
@pass_state
def list_(
    state: State,
    state_: str,
    task_type: str | None,
    level: str | None,
    reason: str | None,
    limit: int,
    cursor: str | None,
) -> None:
    """Tasks in one state, a page at a time (reads the queue's own lists, never KEYS).

    Prints the cursor of the next page when there is more: pass it with --cursor.
    """
    client = state.client()
    page = client.list_tasks(
        state_, task_type=task_type, level=level, reason=reason, limit=limit, cursor=cursor
    )
    if state.json:
        print_json(
            {
                "tasks": [
                    t.model_dump(mode="json", exclude={"payload", "result"}) for t in page.tasks
                ],
                "cursor": page.cursor,
            }
        )
        return
    con = console()
    if not page.tasks:
        con.print(f"no {state_} tasks found" + (" on this page" if page.cursor else ""))
    else:
        now = client.clock()
        table = Table()
        for name in ("id", "type", "priority", "attempts", "age", "detail"):
            table.add_column(name, no_wrap=name == "id")
        for t in page.tasks:
            if t.status.value == "running":
                detail = f"worker {t.worker}"
            elif t.status.value in ("scheduled", "retrying"):
                detail = f"due in {age_since(now, t.due_at)}" if t.due_at > now else "due"
            elif t.error is not None:
                detail = f"{t.reason or '-'}: {t.error.type}: {t.error.message}"
            else:
                detail = t.reason or "-"
            table.add_row(
                t.id,
                t.type,
                t.priority,
                f"{t.attempts}/{t.max_attempts}",
                age_since(t.created_at, now),
                printable(detail)[:80],
            )
        con.print(table)
    if page.cursor:
        echo(f"more: --cursor {page.cursor}")


@click.command()
@click.argument("task_id")
@pass_state
def retry(state: State, task_id: str) -> None:
    """Run a scheduled or retrying task now (exit 3 if it is in neither state)."""
    if not state.client().run_now(task_id):
        raise CliError(f"task {task_id} is not scheduled or retrying", ExitCode.NOT_FOUND)
    if state.json:
        print_json({"id": task_id, "run_now": True})
    else:
        echo(f"task {task_id} is due now")


@click.command()
@click.option("--reason", metavar="TEXT", help="Why (shown by stats and the dashboard).")
@pass_state
def pause(state: State, reason: str | None) -> None:
    """Pause the queue: workers stop claiming, running tasks finish, submits still work."""
    client = state.client()
    changed = client.pause(reason)
    if state.json:
        print_json({"paused": True, "changed": changed})
    else:
        echo(f"{client.config.full_name} " + ("paused" if changed else "was already paused"))


@click.command()
@pass_state
def resume(state: State) -> None:
    """Resume a paused queue: workers claim again."""
    client = state.client()
    changed = client.resume()
    if state.json:
        print_json({"paused": False, "changed": changed})
    else:
        echo(f"{client.config.full_name} " + ("resumed" if changed else "was not paused"))
