"""`submit-many`: tasks as NDJSON on stdin, submitted in chunks, every line accounted for.

Each line is one JSON object with the fields of a TaskRequest: "type" (required),
"payload", "priority", "delay" (seconds), "eta_ms", "idempotency_key", "max_attempts".
A bad line is reported with its number and skipped; the others go in. Each chunk is one
round trip, and its ids are printed as soon as Redis accepted it, so what was printed is
exactly what was accepted, even if a later chunk fails.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import click

from kubeq.cli.common import CliError, ExitCode, State, error_line, pass_state, print_json
from kubeq.protocol import ConnectionFailed, KubeqError, QueueFull, QueueOps, TaskRequest

FIELDS = frozenset(f.name for f in dataclasses.fields(TaskRequest))


@dataclass(frozen=True)
class Rejected:
    line: int
    error: str


def parse_line(text: str) -> TaskRequest:
    """One NDJSON line → a TaskRequest; ValueError saying what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})"
        )
    if "type" not in data:
        raise ValueError('"type" is required')
    return TaskRequest(**data)


def validate(
    ops: QueueOps, numbered: Iterable[tuple[int, str]], now: int
) -> tuple[list[tuple[int, TaskRequest]], list[Rejected]]:
    """Split lines into valid requests and rejections, by the protocol's own checks."""
    good: list[tuple[int, TaskRequest]] = []
    bad: list[Rejected] = []
    for number, text in numbered:
        try:
            request = parse_line(text)
            ops.encode_task(request, now)
        except (ValueError, TypeError, KubeqError) as exc:
            bad.append(Rejected(number, str(exc)))
            continue
        good.append((number, request))
    return good, bad


def chunks(stream: TextIO, size: int) -> Iterator[list[tuple[int, str]]]:
    """(line number, text) of the non-blank lines, `size` at a time."""
    chunk: list[tuple[int, str]] = []
    for number, raw in enumerate(stream, start=1):
        if raw.strip():
            chunk.append((number, raw))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@click.command("submit-many")
@click.argument("file", type=click.File("r"), default="-", required=False)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1, max=10_000),
    default=500,
    show_default=True,
    help="Lines read and submitted per round trip.",
)
@pass_state
def submit_many(state: State, file: TextIO, chunk_size: int) -> None:
    """Submit tasks read as NDJSON from stdin (or FILE), one task per line.

    Each line is an object such as {"type": "images.resize", "payload": {...},
    "priority": "high", "delay": 30, "idempotency_key": "order-42"}. Prints "LINE<TAB>ID"
    for every accepted line as its chunk is accepted, and "line N: why" on stderr for every
    rejected one (exit 2 if any). With -o json, one document at the end.
    """
    client = state.client()
    accepted: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    stopped: CliError | None = None
    for chunk in chunks(file, chunk_size):
        good, bad = validate(client.ops, chunk, client.clock())
        for r in bad:
            rejected.append(r)
            if not state.json:
                error_line(f"line {r.line}: {r.error}")
        if not good:
            continue
        try:
            ids = client.submit_many([req for _, req in good], chunk_size=len(good))
        except QueueFull as exc:
            stopped = CliError(
                f"{exc}: lines from {good[0][0]} on were not submitted", ExitCode.QUEUE_FULL
            )
            break
        except ConnectionFailed as exc:
            stopped = CliError(
                f"{exc}: lines {good[0][0]}-{good[-1][0]} may or may not have been accepted "
                "(check with `kubeq status`); later lines were not submitted",
                ExitCode.UNAVAILABLE,
            )
            break
        for (number, _), task_id in zip(good, ids, strict=True):
            accepted.append({"line": number, "id": task_id})
            if not state.json:
                click.echo(f"{number}\t{task_id}")
    if state.json:
        print_json(
            {
                "accepted": accepted,
                "rejected": [dataclasses.asdict(r) for r in rejected],
                "error": str(stopped) if stopped else None,
            }
        )
    else:
        click.echo(f"submitted {len(accepted)} task(s); {len(rejected)} line(s) rejected", err=True)
    if stopped is not None:
        raise stopped
    if rejected:
        raise click.exceptions.Exit(ExitCode.USAGE)
