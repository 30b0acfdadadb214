"""No Redis password or Secret value reaches any message: client errors, CLI output, worker
logs and `kubeq up` (the operator's: tests/k8s/test_operator_security.py), with hostile
passwords (every URL-special character), values that are not URLs, and unparseable URLs."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from tests.hostile import PASSWORD, hostile_urls, leaked

from kubeq.cli import cli
from kubeq.protocol import AuthenticationFailed, Client, KubeqError, QueueConfig
from kubeq.redis_server import RedisServer, free_port
from kubeq.worker import process
from kubeq.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guarded() -> Iterator[RedisServer]:
    """A redis-server whose password is the hostile one."""
    with RedisServer(password=PASSWORD) as server:
        yield server


def unreachable() -> str:
    return f"127.0.0.1:{free_port()}"


def _everything(exc: BaseException) -> str:
    """The message and the whole traceback with its causes, as a log would print them."""
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("url", hostile_urls("127.0.0.1:1"))
def test_client_errors_never_quote_a_secret(url: str) -> None:
    with pytest.raises(KubeqError) as info:
        Client.from_url(url.replace("127.0.0.1:1", unreachable()), "q", timeout=0.3)
    assert leaked(_everything(info.value)) == []


async def test_async_client_errors_never_quote_a_secret() -> None:
    from kubeq.protocol import AsyncClient

    for url in hostile_urls(unreachable()):
        with pytest.raises(KubeqError) as info:
            await AsyncClient.from_url(url, "q", timeout=0.3)
        assert leaked(_everything(info.value)) == [], url


def test_the_hostile_password_works_encoded_and_is_refused_safely_when_wrong(
    guarded: RedisServer,
) -> None:
    good = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{guarded.port}/0"
    with Client.from_url(good, "q", config=QueueConfig(name="q")) as c:
        c.submit("t")
        assert c.stats().ready == 1
    bad = f"redis://:{quote(PASSWORD[:-1], safe='')}@127.0.0.1:{guarded.port}/0"
    with pytest.raises(AuthenticationFailed) as info:
        Client.from_url(bad, "q")
    assert leaked(_everything(info.value)) == []


@pytest.mark.parametrize("url", hostile_urls("127.0.0.1:1"))
def test_cli_output_never_quotes_a_secret(url: str) -> None:
    url = url.replace("127.0.0.1:1", unreachable())
    runner = CliRunner()
    for args, env in (
        (["--redis-url", url, "stats"], {}),
        (["status", "abc"], {"KUBEQ_REDIS_URL": url}),
        (["-o", "json", "--redis-url", url, "submit", "t", "{}"], {}),
    ):
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code in (2, 5), (args, result.output)
        assert leaked(result.stdout, result.stderr) == [], args


def test_worker_logs_never_quote_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def attempt(settings: WorkerSettings) -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.4, stop.set)
        try:
            await process.connect(settings, stop)
        except KubeqError as exc:  # not transient: what the process logs and exits with
            logging.getLogger("kubeq.worker").error("worker failed: %s", exc)

    async def main() -> None:
        for url in hostile_urls(unreachable()):
            await attempt(WorkerSettings(redis_url=url))
        # The password apart from the URL, as the operator passes it from a Secret.
        await attempt(
            WorkerSettings(
                redis_url=f"redis://{unreachable()}/0", redis_password=PASSWORD, redis_username="a"
            )
        )

    asyncio.run(main())
    assert any("unavailable" in r.getMessage() for r in caplog.records)
    assert leaked(caplog.text) == []


def test_worker_settings_never_show_the_password() -> None:
    settings = WorkerSettings(redis_url="redis://h/0", redis_password=PASSWORD)
    assert leaked(repr(settings), str(settings), settings.model_dump_json()) == []


def test_kubeq_up_banner_and_errors_never_quote_a_secret(tmp_path: Path) -> None:
    from kubeq_operator.local.commands import banner
    from kubeq_operator.local.runner import LocalRunner

    manifest = ROOT / "examples" / "minimal.yaml"
    for url in hostile_urls(unreachable()):
        runner = LocalRunner(manifest, redis_url=url, metrics_port=-1)
        text = banner(runner)
        assert leaked(text) == [], url
        assert "kubeq up: queue default/minimal on " in text
        result = CliRunner().invoke(
            cli, ["up", "-f", str(manifest), "--redis", url, "--no-live", "--duration", "1"]
        )
        assert result.exit_code in (2, 5), result.output
        assert leaked(result.output) == [], url
