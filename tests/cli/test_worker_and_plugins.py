"""`kubeq worker` (with a stand-in runtime), plugin commands, help and version."""

from __future__ import annotations

import sys
import types
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, field_validator
from tests.cli.conftest import CLEAN_ENV

import kubeq.cli
from kubeq.cli import cli

Kubeq = Any


class FakeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str = "env:app"
    redis_url: str | None = None
    queue: str | None = None
    namespace: str | None = None
    concurrency: int = 4
    metrics_port: int | None = None
    pod_name: str | None = None
    log_format: str | None = None
    log_level: str | None = None
    grace_seconds: float | None = None

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str | None) -> str | None:
        if v not in (None, "DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("unknown log level")
        return v


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Stand in for kubeq.worker: records the settings run_worker gets; exits 3."""
    calls: list[Any] = []
    module = types.ModuleType("kubeq.worker")

    def run_worker(settings: FakeSettings) -> int:
        calls.append(settings)
        return 3

    module.WorkerSettings = FakeSettings  # type: ignore[attr-defined]
    module.run_worker = run_worker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kubeq.worker", module)
    return calls


def test_worker_passes_only_the_given_options(kubeq: Kubeq, runtime: list[Any]) -> None:
    kubeq(
        "worker",
        "--app",
        "pkg.tasks:app",
        "--concurrency",
        "16",
        "--metrics-port",
        "9100",
        "--grace-seconds",
        "20",
        "--log-format",
        "json",
        code=3,
    )
    (settings,) = runtime
    assert settings.app == "pkg.tasks:app"
    assert (settings.concurrency, settings.metrics_port, settings.grace_seconds) == (16, 9100, 20)
    assert settings.log_format == "json"
    assert settings.pod_name is None  # unset: left to the environment
    # --redis-url was on the command line; the queue and namespace were defaults.
    assert settings.redis_url is not None
    assert (settings.queue, settings.namespace) == (None, None)


def test_worker_takes_global_options_from_the_command_line(runtime: list[Any]) -> None:
    res = CliRunner().invoke(
        cli,
        ["-q", "jobs", "-n", "prod", "worker"],
        env=CLEAN_ENV,
    )
    assert res.exit_code == 3, res.output
    (settings,) = runtime
    assert (settings.app, settings.queue, settings.namespace) == ("env:app", "jobs", "prod")
    assert settings.redis_url is None


def test_worker_with_invalid_settings_exits_2(kubeq: Kubeq, runtime: list[Any]) -> None:
    res = kubeq("worker", "--app", "x:y", "--pod-name", "p", "--bogus", code=2)
    assert "--bogus" in res.stderr
    res = kubeq("worker", "--concurrency", "0", code=2)
    assert "--concurrency" in res.stderr
    # What the settings class refuses is one line too, not a traceback.
    res = kubeq("worker", "--log-level", "loud", code=2)
    assert res.stderr.startswith("error: invalid worker settings: log_level:")
    assert "unknown log level" in res.stderr
    assert runtime == []


def test_worker_without_the_runtime_is_a_clean_error(
    kubeq: Kubeq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "kubeq.worker", None)  # import fails
    res = kubeq("worker", "--app", "x:y", code=1)
    assert res.stderr.startswith("error: the worker runtime cannot be loaded")


# -- plugins -------------------------------------------------------------------------------


@click.command()
@click.option("--name", default="world")
def hello(name: str) -> None:
    """Say hello (a plugin)."""
    click.echo(f"hello {name}")


class FakeEntryPoint:
    def __init__(self, name: str, target: Any, value: str = "plugin.module:cmd") -> None:
        self.name = name
        self.value = value
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = {
        "hello": FakeEntryPoint("hello", hello),
        "up": FakeEntryPoint("up", ModuleNotFoundError("No module named 'kopf'")),
        "odd": FakeEntryPoint("odd", object()),
        "stats": FakeEntryPoint("stats", hello),  # a built-in name wins
    }
    monkeypatch.setattr(kubeq.cli, "plugin_entry_points", lambda: eps)


def test_plugin_commands_are_listed_and_run(kubeq: Kubeq, plugins: None) -> None:
    help_text = kubeq("--help").stdout
    for name in ("hello", "up", "odd", "submit", "dlq", "bench", "worker"):
        assert f"  {name} " in help_text
    assert "Exit codes:" in help_text
    assert kubeq("hello", "--name", "kubeq").stdout == "hello kubeq\n"
    assert "queue default/default" in kubeq("stats").stdout


def test_a_plugin_that_cannot_load_says_why(kubeq: Kubeq, plugins: None) -> None:
    res = kubeq("up", "-f", "examples/telemetry.yaml", code=1)
    assert res.stderr.startswith("error: command 'up' is unavailable: ModuleNotFoundError")
    assert "kopf" in res.stderr
    assert "is not a click command" in kubeq("odd", code=1).stderr


def test_real_entry_points_are_discovered_without_importing_them() -> None:
    # Whatever is installed: discovery returns entry points, it loads none of them.
    eps = kubeq.cli.plugin_entry_points()
    assert all(hasattr(ep, "load") for ep in eps.values())


def test_version_and_unknown_command(kubeq: Kubeq) -> None:
    assert kubeq("--version").stdout.startswith("kubeq, version ")
    res = kubeq("frobnicate", code=2)
    assert "No such command 'frobnicate'" in res.stderr


def test_worker_takes_the_env_file_but_not_over_the_environment(
    runtime: list[Any], tmp_path: Any
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("KUBEQ_REDIS_URL=redis://127.0.0.1:2222/0\nKUBEQ_QUEUE=fromfile\n")
    env = {**CLEAN_ENV, "KUBEQ_ENV_FILE": str(env_file)}
    assert CliRunner().invoke(cli, ["worker", "--app", "a:b"], env=env).exit_code == 3
    assert CliRunner().invoke(cli, ["worker"], env={**env, "KUBEQ_QUEUE": "env"}).exit_code == 3
    from_file, under_env = runtime
    assert (from_file.redis_url, from_file.queue) == ("redis://127.0.0.1:2222/0", "fromfile")
    # KUBEQ_QUEUE is set: the worker's own settings read it, so nothing is passed
    assert (under_env.redis_url, under_env.queue) == ("redis://127.0.0.1:2222/0", None)
