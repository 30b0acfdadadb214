"""`kubeq dashboard`: serve the web dashboard with uvicorn."""

from __future__ import annotations

import os
import re

import click

from kubeq.cli.common import CliError, ExitCode, State, echo, pass_state

_QUEUE_RE = re.compile(r"^([^/]+)/([^/]+)$")
TOKEN_ENV = "KUBEQ_DASHBOARD_TOKEN"


def _queues(state: State, extra: tuple[str, ...]) -> list[tuple[str, str]]:
    from kubeq.protocol.config import check_name

    out = [(state.namespace, state.queue)]
    for item in extra:
        m = _QUEUE_RE.match(item)
        if not m:
            raise click.BadParameter(f"{item!r} is not NAMESPACE/QUEUE", param_hint="--also")
        ns, q = check_name("namespace", m.group(1)), check_name("queue name", m.group(2))
        if (ns, q) not in out:
            out.append((ns, q))
    return out


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8480, show_default=True)
@click.option(
    "--also",
    multiple=True,
    metavar="NAMESPACE/QUEUE",
    help="Another queue to show (repeatable); --queue/--namespace name the first.",
)
@click.option(
    "--token-env",
    default=TOKEN_ENV,
    show_default=True,
    help="Environment variable holding the token that enables pause, resume, requeue, "
    "purge and run-now (unset: read-only). Never given on the command line, where other "
    "users of the machine could read it.",
)
@click.option(
    "--sample-seconds",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Backlog history sampling interval.",
)
@pass_state
def dashboard(
    state: State, host: str, port: int, also: tuple[str, ...], token_env: str, sample_seconds: float
) -> None:
    """Serve the web dashboard of the queue (read-only unless a token is set)."""
    try:
        import uvicorn

        from kubeq.dashboard.app import Dashboard, build_app
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs the 'dashboard' extra (pip install 'kubeq[dashboard]'): {exc}",
            ExitCode.USAGE,
        ) from None
    from kubeq.protocol import Client

    token = os.environ.get(token_env) or None
    if token is not None and len(token) < 16:
        raise CliError(f"${token_env} must hold at least 16 characters", ExitCode.USAGE)
    url = state.redis_url
    queues = _queues(state, also)
    # Fail fast on a bad URL or credentials, before serving anything.
    Client.from_url(url, queues[0][1], queues[0][0]).close()
    d = Dashboard(
        queues=queues,
        connect=lambda ns, q: Client.from_url(url, q, ns),
        token=token,
        sample_seconds=sample_seconds,
    )
    mode = "read-write (token set)" if token else "read-only"
    echo(f"kubeq dashboard on http://{host}:{port}/ ({mode})", err=True)
    uvicorn.run(build_app(d), host=host, port=port, log_level="warning")
