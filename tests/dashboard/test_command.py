"""`kubeq dashboard`: the command serves the app; bad options are usage errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
from click.testing import CliRunner

from kubeq.cli import cli
from kubeq.protocol import Client
from kubeq.redis_server import free_port


def test_bad_token_and_queue_options_are_usage_errors(redis_url: str) -> None:
    runner = CliRunner()
    env = {"KUBEQ_DASHBOARD_TOKEN": "short", "KUBEQ_ENV_FILE": ""}
    r = runner.invoke(cli, ["--redis-url", redis_url, "dashboard"], env=env)
    assert r.exit_code == 2
    assert "at least 16 characters" in r.stderr
    r = runner.invoke(
        cli, ["--redis-url", redis_url, "dashboard", "--also", "nope"], env={"KUBEQ_ENV_FILE": ""}
    )
    assert r.exit_code == 2
    assert "NAMESPACE/QUEUE" in r.stderr


def test_the_command_serves_the_queue_read_only(redis_url: str) -> None:
    with Client.from_url(redis_url, "jobs") as c:
        c.submit_many([{"type": "t"}] * 3)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubeq.cli", "--redis-url", redis_url, "-q", "jobs", "dashboard",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "KUBEQ_ENV_FILE": ""},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/q/default/jobs").text
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, proc.stderr and proc.stderr.read()
                time.sleep(0.1)
        assert "data-stat=backlog>3<" in page
        assert "read-only" in page
        assert "<form method=post" not in page
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert "read-only" in err
    assert redis_url not in err
