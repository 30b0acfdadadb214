"""`submit`, `status`, `result` and `cancel`: one task at a time."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import click

from kubeq.cli.common import (
    CliError,
    ExitCode,
    State,
    echo,
    error_line,
    fmt_time,
    pass_state,
    print_json,
)
from kubeq.protocol import Client, Task, TaskFailed, TaskStatus, errors
from kubeq.protocol.workflow import WorkflowStatus


def _read_payload(text: str | None, file: TextIO | None) -> Any:
    if text is not None and file is not None:
        raise click.UsageError("give the payload either as an argument or with --file, not both")
    if text == "-":
        text = sys.stdin.read()
    elif file is not None:
        text = file.read()
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"payload is not valid JSON: {exc}", ExitCode.USAGE) from None


def _parse_eta(value: str) -> int:
    """ISO 8601 → epoch ms; a time without an offset is UTC."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint="--eta") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _task_json(task: Task) -> dict[str, Any]:
    return task.model_dump(mode="json", exclude={"token"} if task.token is None else set())


def _print_workflow(state: State, flow: WorkflowStatus) -> None:
    """A workflow: its state, then one line per step (the on-failure step marked)."""
    if state.json:
        print_json(flow.model_dump(mode="json"))
        return
    echo(f"workflow {flow.id}: {flow.state}")
    width = max(len(s.id) for s in flow.steps) if flow.steps else 0
    for s in flow.steps:
        role = "  (on failure)" if s.on_failure else ""
        echo(f"  {s.id:<{width}}  {s.type:<24} {s.status}{role}")


def _print_task(task: Task) -> None:
    status = task.status.value
    if task.status == TaskStatus.RUNNING:
        status += f" (worker {task.worker}, token {task.token})"
    if task.cancel_requested and not task.status.terminal:
        status += ", cancellation requested"
    rows: list[tuple[str, Any]] = [
        ("id", task.id),
        ("type", task.type),
        ("queue", task.queue),
        ("priority", task.priority),
        ("status", status),
        ("attempts", f"{task.attempts}/{task.max_attempts}"),
        ("created", fmt_time(task.created_at)),
        ("due", fmt_time(task.due_at)),
        ("started", fmt_time(task.started_at)),
        ("finished", fmt_time(task.finished_at)),
    ]
    if task.idempotency_key:
        rows.append(("idempotency key", task.idempotency_key))
    if task.reason:
        rows.append(("reason", task.reason))
    if task.error:
        rows.append(("error", f"{task.error.type}: {task.error.message}"))
    if task.progress is not None:
        value = json.dumps(task.progress.value, ensure_ascii=False)
        rows.append(("progress", f"{value} (reported {fmt_time(task.progress.at)})"))
    rows.append(("payload", json.dumps(task.payload, ensure_ascii=False)))
    if task.status == TaskStatus.COMPLETED:
        rows.append(("result", json.dumps(task.result, ensure_ascii=False)))
    for name, value in rows:
        echo(f"{name + ':':<17}{value}")
    if task.error and task.error.traceback:
        echo("traceback:\n" + task.error.traceback.rstrip(), newlines=True)


def _show_result(state: State, client: Client, task_id: str, timeout: float | None) -> None:
    """Print the result of a finished task (waiting up to `timeout`); exit 1 if it failed."""
    try:
        result = client.result(task_id, timeout)
    except TaskFailed as exc:
        if state.json:
            task = client.status(task_id)
            print_json(
                {
                    "id": task_id,
                    "status": exc.status,
                    "result": None,
                    "error": task.error.model_dump() if task.error else None,
                    "reason": task.reason,
                }
            )
        raise CliError(str(exc), ExitCode.FAILED) from None
    if state.json:
        print_json({"id": task_id, "status": "completed", "result": result})
    else:
        echo(json.dumps(result, ensure_ascii=False))


@click.command()
@click.argument("task_type", metavar="TYPE")
@click.argument("payload", required=False)
@click.option(
    "--file",
    "-f",
    "file",
    type=click.File("r"),
    help="Read the payload JSON from a file ('-' for stdin).",
)
@click.option("--priority", "-p", help="Priority level name (default: the queue's default).")
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Run no earlier than SECONDS from now.",
)
@click.option("--eta", metavar="ISO8601", help="Run no earlier than this time (UTC if no offset).")
@click.option("--idempotency-key", help="Submitting the same key again returns the first id.")
@click.option("--max-attempts", type=click.IntRange(min=1), help="Override the queue's retries.")
@click.option("--wait", is_flag=True, help="Wait for the task to finish and print its result.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="With --wait: give up after SECONDS (exit 4).",
)
@pass_state
def submit(
    state: State,
    task_type: str,
    payload: str | None,
    file: TextIO | None,
    priority: str | None,
    delay: float | None,
    eta: str | None,
    idempotency_key: str | None,
    max_attempts: int | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Submit a task of TYPE with a JSON PAYLOAD ('-' reads stdin); print its id."""
    if delay is not None and eta is not None:
        raise click.UsageError("--delay and --eta exclude each other")
    eta_ms = _parse_eta(eta) if eta is not None else None
    data = _read_payload(payload, file)
    client = state.client()
    task_id = client.submit(
        task_type,
        data,
        priority=priority,
        delay=delay,
        eta_ms=eta_ms,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
    )
    if not wait:
        if state.json:
            print_json({"id": task_id})
        else:
            click.echo(task_id)
        return
    if not state.json:
        click.echo(task_id)
    _show_result(state, client, task_id, timeout)


@click.command()
@click.argument("task_id", metavar="ID")
@pass_state
def status(state: State, task_id: str) -> None:
    """Show a task: its state, attempts, times, error and result."""
    client = state.client()
    try:
        task = client.status(task_id)
    except errors.TaskNotFound as not_a_task:
        try:
            flow = client.workflow(task_id)
        except errors.TaskNotFound:
            raise not_a_task from None
        _print_workflow(state, flow)
        return
    if state.json:
        print_json(_task_json(task))
    else:
        _print_task(task)


@click.command()
@click.argument("task_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait until the task finishes.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Wait at most SECONDS (implies --wait); then exit 4.",
)
@pass_state
def result(state: State, task_id: str, wait: bool, timeout: float | None) -> None:
    """Print a finished task's result (exit 1 if it failed, 4 if not finished)."""
    client = state.client()
    if not wait and timeout is None:
        task = client.status(task_id)
        if not task.status.terminal:
            if state.json:
                print_json({"id": task_id, "status": task.status.value, "result": None})
            raise CliError(
                f"task {task_id} is {task.status.value}, not finished (use --wait to wait for it)",
                ExitCode.TIMEOUT,
            )
        timeout = 0
    _show_result(state, client, task_id, timeout)


_CANCEL_OUTCOMES: dict[str, tuple[str, ExitCode]] = {
    "cancelled": ("cancelled", ExitCode.OK),
    "requested": (
        "cancellation requested: the task is running; its worker stops it at its next heartbeat",
        ExitCode.OK,
    ),
    "finished": ("not cancelled: the task has already finished", ExitCode.FAILED),
    "dead": (
        "not cancelled: the task is in the dead-letter set (use `kubeq dlq purge`)",
        ExitCode.FAILED,
    ),
    "unknown": ("no such task", ExitCode.NOT_FOUND),
}


@click.command()
@click.argument("task_id", metavar="ID")
@pass_state
def cancel(state: State, task_id: str) -> None:
    """Cancel a task: pending ones at once, running ones at their next heartbeat."""
    outcome = state.client().cancel(task_id)
    message, code = _CANCEL_OUTCOMES.get(outcome, (outcome, ExitCode.FAILED))
    if state.json:
        print_json({"id": task_id, "outcome": outcome})
    if code == ExitCode.OK:
        if not state.json:
            echo(f"{task_id}: {message}")
        return
    if code == ExitCode.NOT_FOUND:
        raise errors.TaskNotFound(f"no task {task_id} (never submitted, or its record expired)")
    error_line(f"task {task_id}: {message}")
    raise click.exceptions.Exit(code)
