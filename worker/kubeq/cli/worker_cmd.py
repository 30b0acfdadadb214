"""`worker`: run the worker runtime in this process."""

from __future__ import annotations

import importlib
from typing import Any

import click
from pydantic import ValidationError

from kubeq.cli.common import CliError, ExitCode, State

# Global options the worker takes too, as named in WorkerSettings.
_GLOBAL_SETTINGS = ("redis_url", "queue", "namespace")


@click.command()
@click.option("--app", metavar="MODULE:APP", help="The kubeq App with the task handlers.")
# Also accepted after `worker` (as the operator's Deployment passes them); they win over
# the global -q/-n.
@click.option("--queue", "-q", "queue", help="Queue name.")
@click.option("--namespace", "-n", "namespace", help="Namespace of the queue.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Tasks run at once.")
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Port of the Prometheus /metrics endpoint.",
)
@click.option("--pod-name", help="Name reported in the worker registry.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log format.")
@click.option("--log-level", help="Log level (e.g. INFO, DEBUG).")
@click.option(
    "--grace-seconds",
    type=click.FloatRange(min=0),
    help="On SIGTERM, time to finish in-flight tasks before releasing them.",
)
@click.pass_context
def worker(ctx: click.Context, /, **options: Any) -> None:
    """Run a worker for the queue; unset options come from KUBEQ_* environment variables."""
    state = ctx.find_object(State) or State()
    try:
        # Imported here: the runtime is heavier than the CLI, and only this command needs it.
        runtime = importlib.import_module("kubeq.worker")
    except ImportError as exc:
        raise CliError(f"the worker runtime cannot be loaded: {exc}", ExitCode.FAILED) from None
    settings: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    # Global options count only when given on the command line (before or after `worker`)
    # or by .kubeq/env: otherwise WorkerSettings reads the same KUBEQ_* environment and
    # applies its own defaults.
    for name in _GLOBAL_SETTINGS:
        if name not in settings and state.origin.get(name) in ("flag", "env file"):
            settings[name] = getattr(state, name)
    try:
        ws = runtime.WorkerSettings(**settings)
    except ValidationError as exc:
        raise CliError(f"invalid worker settings: {_summary(exc)}", ExitCode.USAGE) from None
    ctx.exit(int(runtime.run_worker(ws)))


def _summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors()
    )
