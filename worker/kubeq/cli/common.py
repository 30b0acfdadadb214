"""What every `kubeq` command shares: global options, exit codes, errors and output."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kubeq.text import printable

# The Redis client, pydantic and rich are imported only by the commands that use them:
# they cost more start-up time than the rest of the CLI together.
if TYPE_CHECKING:
    from rich.console import Console

    from kubeq.protocol import Client, errors

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ExitCode(IntEnum):
    """The exit codes of every `kubeq` command (documented in `kubeq --help`)."""

    OK = 0
    #: the task failed, was dead-lettered or cancelled; or the operation did not happen
    FAILED = 1
    #: bad arguments or input: usage, payload not JSON or too large, unknown priority
    USAGE = 2
    #: no such task (or not in the dead-letter set)
    NOT_FOUND = 3
    #: the task had not finished in time (or yet, without --wait)
    TIMEOUT = 4
    #: Redis cannot be used: bad URL, unreachable, credentials refused
    UNAVAILABLE = 5
    #: the queue refused the tasks: its maxBacklog is reached (backpressure; retry later)
    QUEUE_FULL = 6
    #: Redis refused this ACL user the command or key (NOPERM; see docs/security.md)
    PERMISSION_DENIED = 7


EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  task failed, dead-lettered or cancelled; or the operation did not happen
  2  usage: bad arguments, payload not JSON or too large, unknown priority
  3  not found: no such task (or not in the dead-letter set)
  4  timeout: the task had not finished in time (or yet, without --wait)
  5  Redis unavailable: bad URL, unreachable, credentials refused
  6  queue full: maxBacklog reached (backpressure, retry later)
  7  permission denied: the Redis ACL user may not do this (NOPERM)"""


class CliError(Exception):
    """An expected failure of a command: one line on stderr and an exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code


def check_name(kind: str, value: str) -> str:
    """A queue or namespace name, validated by the protocol's own rule."""
    from kubeq.protocol.config import check_name as protocol_check_name

    return protocol_check_name(kind, value)


def exit_code_for(exc: errors.KubeqError) -> ExitCode:
    from kubeq.protocol import errors

    if isinstance(exc, errors.PermissionDenied):
        return ExitCode.PERMISSION_DENIED
    if isinstance(exc, errors.InvalidURL | errors.ConnectionFailed):
        return ExitCode.UNAVAILABLE
    if isinstance(exc, errors.InvalidTask):
        return ExitCode.USAGE
    if isinstance(exc, errors.TaskNotFound):
        return ExitCode.NOT_FOUND
    if isinstance(exc, errors.ResultTimeout):
        return ExitCode.TIMEOUT
    if isinstance(exc, errors.QueueFull):
        return ExitCode.QUEUE_FULL
    return ExitCode.FAILED


def echo(text: object = "", *, err: bool = False, newlines: bool = False) -> None:
    """One line (or a block, with `newlines`) of human-facing text, control characters
    escaped: every text output of the CLI goes through here or through `console()`."""
    click.echo(printable(text, newlines=newlines), err=err)


def error_line(message: str) -> None:
    echo(f"error: {message}", err=True)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn expected failures into `error: ...` on stderr and the documented exit code."""
    try:
        yield
    except CliError as exc:
        error_line(str(exc))
        raise click.exceptions.Exit(exc.code) from None
    except Exception as exc:
        # Neither can have been raised unless its module was imported: look only then.
        protocol_errors = sys.modules.get("kubeq.protocol.errors")
        redis_errors = sys.modules.get("redis.exceptions")
        if protocol_errors is not None and isinstance(exc, protocol_errors.KubeqError):
            error_line(str(exc))
            raise click.exceptions.Exit(exit_code_for(exc)) from None
        if redis_errors is not None and isinstance(exc, redis_errors.RedisError):
            from kubeq.protocol.connection import translate

            mapped = translate(exc)
            error_line(str(mapped) if mapped else f"Redis error: {exc}")
            code = exit_code_for(mapped) if mapped else ExitCode.FAILED
            raise click.exceptions.Exit(code) from None
        raise


@dataclass
class State:
    """The global options, and the queue client built from them on first use."""

    redis_url: str = DEFAULT_REDIS_URL
    queue: str = "default"
    namespace: str = "default"
    output: str = "text"
    #: where each global option came from: "flag", "env", "env file" or "default"
    origin: dict[str, str] = field(default_factory=dict)
    env_file: Path | None = None
    _client: Client | None = field(default=None, repr=False)

    @property
    def json(self) -> bool:
        return self.output == "json"

    def client(self) -> Client:
        if self._client is None:
            # Reads the queue's published config (levels, limits): the first round trip,
            # so a bad URL, a dead server or wrong credentials surface here.
            from kubeq.protocol import Client, ConnectionFailed

            try:
                self._client = Client.from_url(self.redis_url, self.queue, self.namespace)
            except ConnectionFailed as exc:
                if self.origin.get("redis_url") != "env file":
                    raise
                raise CliError(
                    f"{exc} (the URL is from {self.env_file}, written by `kubeq up`: is it "
                    "running? Or pass --redis-url)",
                    ExitCode.UNAVAILABLE,
                ) from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


pass_state = click.make_pass_decorator(State)


def check_name_option(kind: str) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            return check_name(kind, value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


# -- output ------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    """One JSON document on one line of stdout."""
    click.echo(json.dumps(data, ensure_ascii=False, default=str))


def console(stderr: bool = False) -> Console:
    """A safe rich console on the current stdout (or stderr); wide when not a terminal."""
    from rich.console import Console
    from rich.text import Text

    class SafeConsole(Console):
        """Never interprets data: no markup or emoji codes, and control characters of every
        string it renders (table cells included) escaped."""

        def render_str(self, text: str, **kwargs: Any) -> Text:
            kwargs.update(markup=False, emoji=False, highlight=False)
            return super().render_str(printable(text), **kwargs)

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 160
    return SafeConsole(
        file=stream, width=width, highlight=False, soft_wrap=False, markup=False, emoji=False
    )


def fmt_time(ms: int | None) -> str:
    if not ms:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):  # a record from a foreign or older writer
        return f"{ms} ms since the epoch (out of range)"


def fmt_age(seconds: float | None) -> str:
    """3.2s, 4m05s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{max(seconds, 0.0):.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def age_since(then_ms: int | None, now_ms: int) -> str:
    return "-" if not then_ms else fmt_age((now_ms - then_ms) / 1000)
