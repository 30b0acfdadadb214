"""The `kubeq up` and `kubeq demo` commands, contributed to the kubeq CLI by entry points.

kubeq itself never imports the operator (an import-linter contract); the CLI finds these
through the `kubeq.commands` entry point group of this distribution.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kubeq.cli.common import ExitCode, exit_code_for
from kubeq.text import printable

# The rest is imported when a command runs: `kubeq --help` loads this module to list it.
if TYPE_CHECKING:
    from rich.console import Console

    from kubeq_operator.local.demo import DemoReport
    from kubeq_operator.local.runner import LocalRunner, StopReport

DEFAULT_METRICS_PORT = 8471  # not Prometheus's own 9090, nor an exporter's 91xx-99xx
DEFAULT_STATE_DIR = Path(".kubeq")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def example_manifest(name: str) -> Path:
    """An example TaskQueue shipped with kubeq (the repository's examples/ folder)."""
    packaged = resources.files("kubeq_operator").joinpath("examples", name)
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "examples" / name


@click.command("up")
@click.option(
    "-f",
    "--file",
    "manifest",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TaskQueue manifest (YAML), e.g. examples/telemetry.yaml.",
)
@click.option(
    "--redis",
    "redis_url",
    default=None,
    help="Use this Redis instead of starting a private redis-server.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Keeps the private Redis's data (AOF) and port between runs, the worker logs, "
    "and the env file (KUBEQ_REDIS_URL, ...) that `kubeq` commands in this tree read.",
)
@click.option(
    "--redis-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the private redis-server [default: the state directory's, chosen once].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(-1, 65535),
    default=DEFAULT_METRICS_PORT,
    show_default=True,
    help="Port for the operator's /metrics on 127.0.0.1 (0: any free port, -1: off).",
)
@click.option(
    "--dashboard",
    "dashboard_port",
    type=click.IntRange(-1, 65535),
    default=-1,
    show_default=True,
    metavar="PORT",
    help="Serve the web dashboard on 127.0.0.1:PORT (0: any free port, -1: off); the live "
    "view links to it. Read-only unless $KUBEQ_DASHBOARD_TOKEN is set.",
)
@click.option("--no-live", is_flag=True, help="Plain log lines instead of the live view.")
@click.option(
    "--duration", type=float, default=None, help="Stop (and drain) after this many seconds."
)
@click.option("--log-level", default="WARNING", show_default=True)
def up_command(
    manifest: Path,
    redis_url: str | None,
    state_dir: Path,
    redis_port: int | None,
    metrics_port: int,
    dashboard_port: int,
    no_live: bool,
    duration: float | None,
    log_level: str,
) -> None:
    """Run a TaskQueue on this machine: worker processes, autoscaled like Pods."""
    from kubeq_operator.core.errors import InvalidSpec
    from kubeq_operator.local.runner import LocalRunner

    _setup_logging(log_level)
    try:
        runner = LocalRunner(
            manifest,
            redis_url=redis_url,
            metrics_port=metrics_port,
            state_dir=state_dir,
            redis_port=redis_port,
        )
    except InvalidSpec as exc:
        raise click.ClickException(f"invalid TaskQueue in {manifest}: {exc}") from None
    code = asyncio.run(
        _up(
            runner,
            live=not no_live and sys.stdout.isatty(),
            duration=duration,
            dashboard_port=dashboard_port,
        )
    )
    sys.exit(code)


def banner(runner: LocalRunner) -> str:
    """The first line of `kubeq up`: Redis named by its safe description, never its URL."""
    from kubeq.protocol.connection import describe

    where = f"state in {runner.state.path}" if runner.state else f"logs in {runner.logs_dir}"
    metrics = (
        f"operator metrics on 127.0.0.1:{runner.metrics_port}/metrics · "
        if runner.metrics_port >= 0
        else ""
    )
    return f"kubeq up: queue {runner.ref} on {describe(runner.redis_url)} · {metrics}{where}"


def _serve_dashboard(runner: LocalRunner, port: int) -> tuple[Callable[[], None], str]:
    """Serve the dashboard of the queue `kubeq up` runs; returns its stop and its link.

    In a thread of its own: uvicorn takes over SIGINT/SIGTERM only in the main thread, and
    kubeq up's own handlers must keep draining the workers on Ctrl-C.
    """
    import os
    import socket
    import threading
    import time

    import uvicorn

    from kubeq.dashboard.app import Dashboard, build_app
    from kubeq.dashboard.command import TOKEN_ENV
    from kubeq.protocol import Client

    url, ref = runner.redis_url, runner.ref
    d = Dashboard(
        queues=[(ref.namespace, ref.name)],
        connect=lambda ns, q: Client.from_url(url, q, ns),
        token=os.environ.get(TOKEN_ENV) or None,
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(d), log_level="warning"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="dashboard", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(5)
        sock.close()

    return stop, f"http://127.0.0.1:{bound}/q/{ref.namespace}/{ref.name}"


async def _up(
    runner: LocalRunner, *, live: bool, duration: float | None, dashboard_port: int = -1
) -> int:
    from rich.console import Console
    from rich.live import Live

    from kubeq.protocol import KubeqError
    from kubeq_operator.local.live import line, render
    from kubeq_operator.local.runner import UpError

    console = Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:  # a second Ctrl-C: stop waiting for the drain
            runner.kill_workers()
        stop.set()

    # Installed before anything starts, so that no signal can skip the cleanup below.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)
    try:
        await runner.start()  # on failure it has stopped what it started
    except (UpError, KubeqError, OSError) as exc:
        click.echo(f"error: {printable(str(exc))}", err=True)
        return int(exit_code_for(exc) if isinstance(exc, KubeqError) else ExitCode.FAILED)
    report: StopReport | None = None
    stop_dashboard: Callable[[], None] | None = None
    link: str | None = None
    try:
        if dashboard_port >= 0:
            stop_dashboard, link = await asyncio.to_thread(_serve_dashboard, runner, dashboard_port)
            click.echo(f"dashboard on {link}")
        if duration is not None:
            loop.call_later(duration, stop.set)
        click.echo(banner(runner))
        if runner.state is not None:
            click.echo(
                f"kubeq commands run under {runner.state.path.parent} use this queue "
                f"(from {runner.state.env_file})"
            )
        if live:
            _log_through(console)  # log lines above the live view, not through it
            port = runner.metrics_port if runner.metrics_port >= 0 else None
            with Live(console=console, refresh_per_second=4) as view:
                await runner.run(
                    stop, lambda s: view.update(render(runner.ref, s, port, dashboard=link))
                )
        else:
            # One unwrapped line per tick, whatever the width of a pipe or terminal.
            await runner.run(stop, lambda s: click.echo(line(runner.ref, s)))
        click.echo("draining workers…")
    finally:
        if stop_dashboard is not None:
            await asyncio.to_thread(stop_dashboard)
        report = await runner.shutdown()
    for text in stop_lines(runner, report):
        click.echo(text)
    return 0


def _log_through(console: Console) -> None:
    """Send log records through the live view's console, which prints them above it."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=False))


def stop_lines(runner: LocalRunner, report: StopReport) -> list[str]:
    """What `kubeq up` says when it stops: the workers' fates, then what is left where."""
    lines = [report.workers.summary()]
    if report.crashes.count:
        lines.append(
            f"workers crashed {report.crashes.count} time(s) during the run; the last said: "
            f"{report.crashes.last_error} (logs in {runner.logs_dir})"
        )
    stats = report.remaining
    if stats is None:
        lines.append(f"could not count the tasks left in queue {runner.ref}: Redis did not answer")
        return lines
    left = stats.ready + stats.delayed + stats.in_flight
    detail = (
        f"{stats.ready} ready, {stats.delayed} delayed, {stats.in_flight} in flight, "
        f"{stats.dead} dead-lettered"
    )
    if left == 0 and stats.dead == 0:
        lines.append(f"queue {runner.ref} is empty")
    elif report.kept_in is None:
        lines.append(f"{left} task(s) left in queue {runner.ref} ({detail}) were discarded")
    else:
        lines.append(
            f"{left} task(s) left in queue {runner.ref} ({detail}), kept in {report.kept_in}"
        )
    return lines


@click.group("demo")
def demo_command() -> None:
    """Demonstrations that run entirely on this machine."""


@demo_command.command("telemetry")
@click.option(
    "-f",
    "--file",
    "manifest",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="TaskQueue manifest (default: examples/telemetry.yaml).",
)
@click.option("--devices", default=50, show_default=True)
@click.option("--scale", default=1.0, show_default=True, help="Multiply the traffic profile.")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--out",
    "out_dir",
    default=Path("demo-output"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--no-live", is_flag=True)
@click.option(
    "--settle-timeout",
    default=120.0,
    show_default=True,
    help="Seconds to wait for the drain and scale-down after the traffic.",
)
def telemetry_command(
    manifest: Path | None,
    devices: int,
    scale: float,
    seed: int,
    out_dir: Path,
    no_live: bool,
    settle_timeout: float,
) -> None:
    """Device fleet → burst → scale up → drain → scale down, then a summary and a plot."""
    from rich.console import Console
    from rich.live import Live

    from kubeq.examples.simulator import Phase
    from kubeq_operator.core.errors import InvalidSpec
    from kubeq_operator.local.demo import run_demo
    from kubeq_operator.local.live import line, render
    from kubeq_operator.local.runner import load_manifest

    _setup_logging("WARNING")
    console = Console()
    manifest = manifest or example_manifest("telemetry.yaml")
    try:
        ref = load_manifest(manifest)[0]
    except InvalidSpec as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"kubeq demo telemetry: {devices} devices, queue {ref} from {manifest}")

    def on_phase(p: Phase) -> None:
        console.print(f"traffic phase: {p.name} ({p.rate:.0f} readings/s for {p.seconds:.0f} s)")

    demo = functools.partial(
        run_demo,
        manifest,
        devices=devices,
        scale=scale,
        seed=seed,
        out_dir=out_dir,
        settle_timeout=settle_timeout,
        on_phase=on_phase,
    )

    async def main() -> DemoReport:
        if not no_live and sys.stdout.isatty():
            with Live(console=console, refresh_per_second=4) as view:
                return await demo(on_snapshot=lambda s: view.update(render(ref, s)))
        return await demo(on_snapshot=lambda s: click.echo(line(ref, s)))  # never wrapped

    report = asyncio.run(main())
    print_report(console, report, out_dir)
    sys.exit(0 if report.ok else 1)


def print_report(console: Console, r: DemoReport, out_dir: Path) -> None:
    from rich.table import Table

    t = Table(title="kubeq demo telemetry: summary", show_header=False)
    t.add_column(justify="left")
    t.add_column(justify="right")
    t.add_row("tasks submitted", f"{r.submitted:,} ({r.scheduled:,} by schedules)")
    t.add_row("completed", f"{r.completed:,}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.dead_reasons.items()))
    t.add_row("dead-lettered", f"{r.dead_lettered:,} ({reasons or 'none'})")
    t.add_row("retried (transient downstream errors)", f"{r.retried:,}")
    t.add_row("unaccounted / completed twice", f"{r.unaccounted} / {r.duplicates}")
    t.add_row("tasks released by scale-down (interrupted)", f"{r.released_by_scale_down}")
    t.add_row("throughput (completed / span)", f"{r.throughput_per_second:,.0f} tasks/s")
    t.add_row(
        "queue wait p50 / p95 / p99 / max",
        " / ".join(f"{r.queue_wait_ms[k]:,.0f} ms" for k in ("p50", "p95", "p99", "max")),
    )
    t.add_row(
        "workers: min → max → final", f"{r.min_replicas} → {r.max_workers} → {r.final_workers}"
    )
    t.add_row("anomalies flagged", f"{r.anomalies_flagged}")
    t.add_row("duration", f"{r.duration_seconds:.0f} s")
    console.print(t)
    console.print("scale decisions:")
    for at, text in r.scale_decisions:
        console.print(f"  {at:6.1f} s  {text}", highlight=False)
    console.print(f"wrote {out_dir / 'demo-telemetry.png'} and {out_dir / 'demo-telemetry.json'}")
    console.print(
        "[green]every task completed or dead-lettered exactly once[/]"
        if r.ok
        else "[red]ACCOUNTING FAILED: see unaccounted/duplicates above[/]"
    )
