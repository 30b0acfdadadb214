"""The `kubeq` command line.

Built-in commands live in this package; other packages add commands (`up`, `operator`,
`demo`) through entry points of the group "kubeq.commands", each a click.Command, loaded
only when used. kubeq never imports those packages itself.

Start-up time matters (a shell loop of `kubeq submit` pays it per task): a command's
module, and with it the Redis client and pydantic, is imported only when that command
runs; `kubeq --help` lists the built-ins from the table below without importing them.

The global options (--redis-url, -q, -n, -o) are accepted before or after the
subcommand: every built-in command carries a copy of each that it does not define
itself, and a copy given on the command line wins.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kubeq import __version__  # cheap: kubeq imports its public names on first use
from kubeq.cli.common import (
    DEFAULT_REDIS_URL,
    EXIT_CODES_HELP,
    CliError,
    ExitCode,
    State,
    check_name,
    handle_errors,
)
from kubeq.cli.envfile import find_env_file, read_env_file

ENTRY_POINT_GROUP = "kubeq.commands"

# name → (module, attribute, one-line help shown by `kubeq --help` without importing it).
# A test checks each summary against the command's own docstring.
BUILTIN: dict[str, tuple[str, str, str]] = {
    "submit": (
        "kubeq.cli.tasks",
        "submit",
        "Submit a task of TYPE with a JSON PAYLOAD ('-' reads stdin); print its id.",
    ),
    "submit-many": (
        "kubeq.cli.bulk",
        "submit_many",
        "Submit tasks read as NDJSON from stdin (or FILE), one task per line.",
    ),
    "status": (
        "kubeq.cli.tasks",
        "status",
        "Show a task: its state, attempts, times, error and result.",
    ),
    "result": (
        "kubeq.cli.tasks",
        "result",
        "Print a finished task's result (exit 1 if it failed, 4 if not finished).",
    ),
    "cancel": (
        "kubeq.cli.tasks",
        "cancel",
        "Cancel a task: pending ones at once, running ones at their next heartbeat.",
    ),
    "schedules": (
        "kubeq.cli.schedules",
        "schedules",
        "List the queue's schedules: last and next run, last task, fired and skipped ticks.",
    ),
    "stats": (
        "kubeq.cli.stats",
        "stats",
        "Backlog per priority, dead letters, workers and counters of the queue.",
    ),
    "workers": (
        "kubeq.cli.stats",
        "workers",
        "The registered workers of the queue: in-flight tasks, concurrency, last heartbeat.",
    ),
    "dlq": ("kubeq.cli.dlq", "dlq", "List, requeue and purge dead-lettered tasks."),
    "tasks": (
        "kubeq.cli.control",
        "tasks",
        "List the queue's tasks by state, type and priority level.",
    ),
    "retry": (
        "kubeq.cli.control",
        "retry",
        "Run a scheduled or retrying task now (exit 3 if it is in neither state).",
    ),
    "pause": (
        "kubeq.cli.control",
        "pause",
        "Pause the queue: workers stop claiming, running tasks finish, submits still work.",
    ),
    "resume": ("kubeq.cli.control", "resume", "Resume a paused queue: workers claim again."),
    "dashboard": (
        "kubeq.dashboard.command",
        "dashboard",
        "Serve the web dashboard of the queue (read-only unless a token is set).",
    ),
    "worker": (
        "kubeq.cli.worker_cmd",
        "worker",
        "Run a worker for the queue; unset options come from KUBEQ_* environment variables.",
    ),
    "bench": (
        "kubeq.cli.bench",
        "bench",
        "Submit a burst of tasks and measure submission (and completion) throughput.",
    ),
}


@dataclass(frozen=True)
class GlobalOption:
    name: str
    decls: tuple[str, ...]
    envvar: str | None
    default: str
    help: str
    type: Any = None
    check: Callable[[str], str] | None = None


GLOBAL_OPTIONS: tuple[GlobalOption, ...] = (
    GlobalOption(
        "redis_url",
        ("--redis-url",),
        "KUBEQ_REDIS_URL",
        DEFAULT_REDIS_URL,
        "redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL.",
    ),
    GlobalOption(
        "queue",
        ("--queue", "-q"),
        "KUBEQ_QUEUE",
        "default",
        "Queue name.",
        check=lambda v: check_name("queue name", v),
    ),
    GlobalOption(
        "namespace",
        ("--namespace", "-n"),
        "KUBEQ_NAMESPACE",
        "default",
        "Namespace of the queue.",
        check=lambda v: check_name("namespace", v),
    ),
    GlobalOption(
        "output",
        ("--output", "-o"),
        None,
        "text",
        "json: one machine-readable JSON document on stdout.",
        type=click.Choice(["text", "json"]),
    ),
)


def plugin_entry_points() -> dict[str, Any]:
    """name → entry point of the commands other installed packages contribute."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _unavailable(name: str, reason: str) -> click.Command:
    """Stands in for a plugin command that cannot be loaded, and says why when run."""

    def run(args: tuple[str, ...]) -> None:
        raise CliError(f"command {name!r} is unavailable: {reason}", ExitCode.FAILED)

    return click.Command(
        name,
        callback=run,
        help=f"(unavailable: {reason})",
        add_help_option=False,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


def _validated(opt: GlobalOption, value: str, ctx: click.Context, where: str) -> str:
    if opt.check is None:
        return value
    try:
        return opt.check(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} ({where})", ctx, param_hint=opt.decls[0]) from None


def _late_global(opt: GlobalOption) -> click.Option:
    """A copy of a global option for use after the subcommand; when given, it wins."""

    def apply(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is None:
            return
        state = ctx.find_object(State)
        if state is None:  # run without the group (tests): nothing to set
            return
        setattr(state, opt.name, _validated(opt, value, ctx, "command line"))
        state.origin[opt.name] = "flag"

    return click.Option(
        list(opt.decls),
        type=opt.type,
        default=None,
        expose_value=False,
        callback=apply,
        help=f"{opt.help} (Also accepted before the command.)",
    )


def accept_global_options(command: click.Command) -> click.Command:
    """Give `command` (and a group's subcommands) the global options it does not define."""
    if getattr(command, "_kubeq_globals", False):
        return command
    taken = {d for p in command.params for d in getattr(p, "opts", [])}
    for opt in GLOBAL_OPTIONS:
        if not taken.intersection(opt.decls):
            command.params.append(_late_global(opt))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_global_options(sub)
    command._kubeq_globals = True  # type: ignore[attr-defined]
    return command


class KubeqGroup(click.Group):
    """Lazily imported built-ins plus plugins; kubeq errors become exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(BUILTIN) | set(plugin_entry_points()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        added = super().get_command(ctx, cmd_name)
        if added is not None:
            return added
        if cmd_name in BUILTIN:
            module, attr, _ = BUILTIN[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            return accept_global_options(command)
        ep = plugin_entry_points().get(cmd_name)
        if ep is None:
            return None
        try:
            command = ep.load()
        except Exception as exc:  # a broken or incomplete install must not break the CLI
            return _unavailable(
                cmd_name,
                f"{type(exc).__name__}: {exc} (from {ep.value}; "
                "is the package that provides it fully installed?)",
            )
        if not isinstance(command, click.Command):
            return _unavailable(cmd_name, f"{ep.value} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Built-ins from the table (no import); plugins are loaded for their help.
        rows: list[tuple[str, str]] = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        for name in names:
            if name in BUILTIN:
                summary = click.Command(name, help=BUILTIN[name][2])
                rows.append((name, summary.get_short_help_str(limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        with handle_errors():
            return super().invoke(ctx)


def _group_option(opt: GlobalOption) -> Callable[[Any], Any]:
    return click.option(
        *opt.decls,
        opt.name,
        envvar=opt.envvar,
        default=opt.default,
        type=opt.type,
        show_default=True,
        show_envvar=opt.envvar is not None,
        metavar="URL" if opt.name == "redis_url" else None,
        help=opt.help,
    )


def _env_file() -> Path | None:
    """KUBEQ_ENV_FILE names the file ('' turns the lookup off); else the nearest one."""
    given = os.environ.get("KUBEQ_ENV_FILE")
    if given is not None:
        return Path(given) if given else None
    return find_env_file()


def _resolve_globals(ctx: click.Context, values: dict[str, str]) -> State:
    """flag > environment variable > .kubeq/env > default, recording where each came from."""
    file_values: dict[str, str] | None = None
    path: Path | None = None
    origin: dict[str, str] = {}
    for opt in GLOBAL_OPTIONS:
        source = ctx.get_parameter_source(opt.name)
        if source == ParameterSource.COMMANDLINE:
            origin[opt.name] = "flag"
        elif source == ParameterSource.ENVIRONMENT:
            origin[opt.name] = "env"
        else:
            origin[opt.name] = "default"
            if opt.envvar is None:
                continue
            if file_values is None:
                path = _env_file()
                file_values = read_env_file(path)
            if opt.envvar in file_values:
                values[opt.name] = _validated(opt, file_values[opt.envvar], ctx, f"from {path}")
                origin[opt.name] = "env file"
                continue
        if opt.check is not None:
            values[opt.name] = _validated(opt, values[opt.name], ctx, origin[opt.name])
    return State(
        redis_url=values["redis_url"],
        queue=values["queue"],
        namespace=values["namespace"],
        output=values["output"],
        origin=origin,
        env_file=path if file_values else None,
    )


def _cli(ctx: click.Context, /, **values: str) -> None:
    """kubeq: submit, inspect and run tasks of a Redis-backed Kubernetes task queue.

    Global options go before or after the command. Each comes from, in order: the
    command line, its KUBEQ_* environment variable, the nearest .kubeq/env file (written
    by `kubeq up`; KUBEQ_ENV_FILE names another, '' none), the default.
    """
    state = _resolve_globals(ctx, values)
    ctx.obj = state
    ctx.call_on_close(state.close)


_callback: Any = click.pass_context(_cli)
for _opt in reversed(GLOBAL_OPTIONS):
    _callback = _group_option(_opt)(_callback)
cli: KubeqGroup = click.group(
    "kubeq",
    cls=KubeqGroup,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)(click.version_option(__version__, "--version", prog_name="kubeq")(_callback))


def main() -> None:
    """Console script entry point."""
    cli(prog_name="kubeq")


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "ExitCode", "cli", "main"]
