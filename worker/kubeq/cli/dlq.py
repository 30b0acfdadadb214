"""`dlq list|requeue|purge`: the dead-letter set."""

from __future__ import annotations

from collections.abc import Sequence

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

BATCH = 1000


@click.group()
def dlq() -> None:
    """List, requeue and purge dead-lettered tasks."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@pass_state
def list_(state: State, limit: int, offset: int) -> None:
    """Dead-lettered tasks, oldest first, with their last error."""
    client = state.client()
    letters = client.dead_letters(offset, limit)
    if state.json:
        print_json(
            [
                {**d.task.model_dump(mode="json", exclude={"token"}), "dead_at": d.dead_at}
                for d in letters
            ]
        )
        return
    now = client.clock()
    total = client.stats().dead
    con = console()
    if not letters:
        con.print(f"no dead letters at offset {offset} ({total} in total)")
        return
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("type")
    table.add_column("priority")
    table.add_column("attempts", justify="right")
    table.add_column("dead for", justify="right")
    table.add_column("reason")
    table.add_column("error", overflow="ellipsis", no_wrap=True, max_width=60)
    for d in letters:
        t = d.task
        error = f"{t.error.type}: {t.error.message}" if t.error else "-"
        table.add_row(
            t.id,
            t.type,
            t.priority,
            f"{t.attempts}/{t.max_attempts}",
            age_since(d.dead_at, now),
            t.reason or "-",
            error,
        )
    con.print(f"dead letters {offset + 1}-{offset + len(letters)} of {total}")
    con.print(table)


def _select(ids: Sequence[str], all_: bool) -> list[str] | None:
    if bool(ids) == all_:
        raise click.UsageError("give task IDS or --all (not both)")
    return None if all_ else list(dict.fromkeys(ids))


def _report_missing(ids: list[str] | None, count: int, verb: str) -> None:
    """Exit 3 when some of the given ids were not in the dead-letter set."""
    if ids is not None and count < len(ids):
        raise CliError(
            f"{len(ids) - count} of the given tasks are not in the dead-letter set; {verb} {count}",
            ExitCode.NOT_FOUND,
        )


_REASON = click.option("--reason", metavar="R", help="Only dead letters with this reason.")
_TYPE = click.option("--type", "task_type", metavar="T", help="Only tasks of this type.")


@dlq.command()
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Requeue every dead-lettered task.")
@_REASON
@_TYPE
@pass_state
def requeue(
    state: State, ids: tuple[str, ...], all_: bool, reason: str | None, task_type: str | None
) -> None:
    """Move dead-lettered tasks back to their ready lists with fresh attempts.

    --reason and --type select the dead letters to requeue (instead of IDS or --all).
    """
    client = state.client()
    if reason is not None or task_type is not None:
        if ids or all_:
            raise click.UsageError("give IDS, --all, or --reason/--type (one of them)")
        matching = client.requeue_dead_where(reason=reason, task_type=task_type)
        if state.json:
            print_json({"requeued": matching})
        else:
            echo(f"requeued {len(matching)} task(s)")
        return
    selected = _select(ids, all_)
    if selected is None:
        # Batch by batch: every listed id is in the set, so each batch makes progress.
        requeued: list[str] = []
        while batch := client.requeue_dead(None, BATCH):
            requeued.extend(batch)
    else:
        requeued = client.requeue_dead(selected)
    if state.json:
        print_json({"requeued": requeued})
    else:
        echo(f"requeued {len(requeued)} task(s)")
    _report_missing(selected, len(requeued), "requeued")


@dlq.command()
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Purge every dead-lettered task.")
@_REASON
@_TYPE
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def purge(
    state: State,
    ids: tuple[str, ...],
    all_: bool,
    reason: str | None,
    task_type: str | None,
    yes: bool,
) -> None:
    """Delete dead-lettered tasks for good (asks first unless --yes).

    --reason and --type select the dead letters to purge (instead of IDS or --all).
    """
    client = state.client()
    if reason is not None or task_type is not None:
        if ids or all_:
            raise click.UsageError("give IDS, --all, or --reason/--type (one of them)")
        what = " and ".join(
            f"{k} {v!r}" for k, v in (("reason", reason), ("type", task_type)) if v is not None
        )
        if not yes and not click.confirm(
            f"Purge the dead letters with {what} of {client.config.full_name}?", err=True
        ):
            raise CliError("nothing purged", ExitCode.FAILED)
        gone = client.purge_dead_where(reason=reason, task_type=task_type)
        if state.json:
            print_json({"purged": len(gone)})
        else:
            echo(f"purged {len(gone)} task(s)")
        return
    selected = _select(ids, all_)
    if not yes:
        what = f"all {client.stats().dead}" if selected is None else str(len(selected))
        if not click.confirm(
            f"Purge {what} dead-lettered task(s) of {client.config.full_name}?", err=True
        ):
            raise CliError("nothing purged", ExitCode.FAILED)
    if selected is None:
        purged = 0
        while n := client.purge_dead(None, BATCH):
            purged += n
    else:
        purged = client.purge_dead(selected)
    if state.json:
        print_json({"purged": purged})
    else:
        echo(f"purged {purged} task(s)")
    _report_missing(selected, purged, "purged")
