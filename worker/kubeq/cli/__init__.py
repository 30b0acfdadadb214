"""The `kubeq` command line.

Built-in commands live in this package; other packages add commands (`up`, `operator`,
`demo`) through entry points of the group "kubeq.commands", each a click.Command, loaded
only when used. kubeq never imports those packages itself.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import click

from kubeq import __version__
from kubeq.cli.bench import bench
from kubeq.cli.common import (
    DEFAULT_REDIS_URL,
    EXIT_CODES_HELP,
    CliError,
    ExitCode,
    State,
    check_name_option,
    handle_errors,
)
from kubeq.cli.dlq import dlq
from kubeq.cli.stats import stats, workers
from kubeq.cli.tasks import cancel, result, status, submit
from kubeq.cli.worker_cmd import worker

ENTRY_POINT_GROUP = "kubeq.commands"
BUILTIN: tuple[click.Command, ...] = (
    submit,
    status,
    result,
    cancel,
    stats,
    workers,
    dlq,
    worker,
    bench,
)


def plugin_entry_points() -> dict[str, Any]:
    """name → entry point of the commands other installed packages contribute."""
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


class KubeqGroup(click.Group):
    """Built-in commands plus lazily loaded plugins; kubeq errors become exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(plugin_entry_points()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        builtin = super().get_command(ctx, cmd_name)
        if builtin is not None:
            return builtin
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

    def invoke(self, ctx: click.Context) -> Any:
        with handle_errors():
            return super().invoke(ctx)


@click.group(
    "kubeq",
    cls=KubeqGroup,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--redis-url",
    envvar="KUBEQ_REDIS_URL",
    default=DEFAULT_REDIS_URL,
    show_default=True,
    show_envvar=True,
    metavar="URL",
    help="redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL.",
)
@click.option(
    "--queue",
    "-q",
    envvar="KUBEQ_QUEUE",
    default="default",
    show_default=True,
    show_envvar=True,
    callback=check_name_option("queue name"),
    help="Queue name.",
)
@click.option(
    "--namespace",
    "-n",
    envvar="KUBEQ_NAMESPACE",
    default="default",
    show_default=True,
    show_envvar=True,
    callback=check_name_option("namespace"),
    help="Namespace of the queue.",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one machine-readable JSON document on stdout.",
)
@click.version_option(__version__, "--version", prog_name="kubeq")
@click.pass_context
def cli(ctx: click.Context, redis_url: str, queue: str, namespace: str, output: str) -> None:
    """kubeq: submit, inspect and run tasks of a Redis-backed Kubernetes task queue."""
    state = State(redis_url=redis_url, queue=queue, namespace=namespace, output=output)
    ctx.obj = state
    ctx.call_on_close(state.close)


for _command in BUILTIN:
    cli.add_command(_command)


def main() -> None:
    """Console script entry point."""
    cli(prog_name="kubeq")


__all__ = ["ENTRY_POINT_GROUP", "ExitCode", "cli", "main"]
