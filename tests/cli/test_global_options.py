"""Global options anywhere, their precedence (flag > env var > .kubeq/env > default), the
help listing without imports, and the start-up cost of the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.cli.conftest import CLEAN_ENV, expect

import kubeq
import kubeq.cli
from kubeq.cli import BUILTIN, cli
from kubeq.cli.envfile import find_env_file, parse_env, write_env_file
from kubeq.protocol import Client

Kubeq = Any


def test_global_options_work_after_the_command_too(kubeq: Kubeq, redis_url: str) -> None:
    with Client.from_url(redis_url, "hooks", "team") as c:
        c.publish_config()
        c.submit("t", 1)
    # after the command
    out = kubeq("stats", "-q", "hooks", "-n", "team", "-o", "json").stdout
    assert json.loads(out)["queue"] == "team/hooks"
    # in a subgroup's command
    assert json.loads(kubeq("dlq", "list", "-q", "hooks", "-n", "team", "-o", "json").stdout) == []
    # after wins over before (the later, more specific one)
    out = kubeq("-q", "other", "stats", "-q", "hooks", "-n", "team", "-o", "json").stdout
    assert json.loads(out)["queue"] == "team/hooks"
    # and it is validated as before
    res = kubeq("stats", "-q", "Bad Name", code=2)
    assert "queue name 'Bad Name' is invalid" in res.stderr


def test_redis_url_after_the_command(redis_url: str, queue_client: Client) -> None:
    res = CliRunner().invoke(
        cli, ["submit", "t", "1", "--redis-url", redis_url], env=CLEAN_ENV, catch_exceptions=False
    )
    task_id = expect(res, 0).stdout.strip()
    assert queue_client.status(task_id).payload == 1


def _where(env: dict[str, str | None], *args: str) -> dict[str, Any]:
    """The queue the CLI would use: `stats -o json` against an unreachable URL fails, so
    read the State instead through a tiny command."""
    seen: dict[str, Any] = {}

    import click

    from kubeq.cli.common import State

    @click.command("where")
    @click.pass_obj
    def where(state: State) -> None:
        seen.update(url=state.redis_url, queue=state.queue, origin=dict(state.origin))

    cli.add_command(kubeq.cli.accept_global_options(where))
    try:
        res = CliRunner().invoke(cli, [*args, "where"], env={**CLEAN_ENV, **env})
        expect(res, 0)
    finally:
        del cli.commands["where"]
    return seen


def test_precedence_flag_env_var_env_file_default(tmp_path: Path) -> None:
    env_file = tmp_path / ".kubeq" / "env"
    write_env_file(
        env_file, {"KUBEQ_REDIS_URL": "redis://127.0.0.1:1111/0", "KUBEQ_QUEUE": "fromfile"}
    )
    assert env_file.stat().st_mode & 0o777 == 0o600  # may hold a password
    file_only = {"KUBEQ_ENV_FILE": str(env_file)}
    seen = _where(file_only)
    assert (seen["url"], seen["queue"]) == ("redis://127.0.0.1:1111/0", "fromfile")
    assert seen["origin"]["queue"] == "env file"
    seen = _where({**file_only, "KUBEQ_QUEUE": "fromenv"})
    assert (seen["queue"], seen["origin"]["queue"]) == ("fromenv", "env")
    seen = _where({**file_only, "KUBEQ_QUEUE": "fromenv"}, "-q", "fromflag")
    assert (seen["queue"], seen["origin"]["queue"]) == ("fromflag", "flag")
    seen = _where({})  # KUBEQ_ENV_FILE="" (CLEAN_ENV): no file
    assert (seen["url"], seen["queue"]) == ("redis://127.0.0.1:6379/0", "default")
    assert seen["origin"]["redis_url"] == "default"


def test_the_env_file_is_found_from_subdirectories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_env_file(tmp_path / ".kubeq" / "env", {"KUBEQ_QUEUE": "found"})
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_env_file(deep) == tmp_path / ".kubeq" / "env"
    monkeypatch.chdir(deep)
    assert _where({"KUBEQ_ENV_FILE": None})["queue"] == "found"


def test_a_bad_name_in_the_env_file_says_where_it_came_from(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("KUBEQ_QUEUE=Not Valid\n")
    res = CliRunner().invoke(cli, ["stats"], env={**CLEAN_ENV, "KUBEQ_ENV_FILE": str(env_file)})
    assert res.exit_code == 2
    assert f"from {env_file}" in res.stderr


def test_env_file_parsing_keeps_only_known_keys() -> None:
    text = "# c\nexport KUBEQ_QUEUE=q\nKUBEQ_REDIS_URL=redis://h:1/0\nPATH=/evil\nnonsense\n"
    assert parse_env(text) == {"KUBEQ_QUEUE": "q", "KUBEQ_REDIS_URL": "redis://h:1/0"}


def test_help_summaries_match_the_commands_own_help() -> None:
    for name, (_module, _attr, summary) in BUILTIN.items():
        command = cli.get_command(None, name)  # type: ignore[arg-type]
        assert command is not None
        assert command.get_short_help_str(10_000) == summary, name


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "KUBEQ_ENV_FILE": ""},
    ).stdout
    return set(out.split())


def test_help_imports_neither_redis_nor_pydantic() -> None:
    modules = _imported_after(
        "from kubeq.cli import cli\n"
        "try:\n    cli(['--help'], prog_name='kubeq')\nexcept SystemExit:\n    pass"
    )
    assert "click" in modules
    assert not {"redis", "pydantic", "rich", "kubeq.protocol", "kubeq.app"} & modules


def test_an_unreachable_url_from_the_env_file_says_where_it_came_from(tmp_path: Path) -> None:
    from kubeq.redis_server import free_port

    env_file = tmp_path / "env"
    env_file.write_text(f"KUBEQ_REDIS_URL=redis://127.0.0.1:{free_port()}/0\n")
    res = CliRunner().invoke(cli, ["stats"], env={**CLEAN_ENV, "KUBEQ_ENV_FILE": str(env_file)})
    assert res.exit_code == 5
    assert f"the URL is from {env_file}, written by `kubeq up`: is it running?" in res.stderr
