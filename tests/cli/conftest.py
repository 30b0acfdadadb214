"""Helpers for the CLI tests: run `kubeq` in-process, and a tiny in-test worker loop."""

from __future__ import annotations

import random
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kubeq.cli import cli
from kubeq.protocol import Client, Settlement, TaskError

# Keep the developer's environment out of the tests.
CLEAN_ENV: dict[str, str | None] = {
    "KUBEQ_REDIS_URL": None,
    "KUBEQ_QUEUE": None,
    "KUBEQ_NAMESPACE": None,
    "KUBEQ_ENV_FILE": "",  # and any .kubeq/env of the working tree
}

Kubeq = Callable[..., Result]


def expect(result: Result, code: int) -> Result:
    """Assert the exit code; on a mismatch show the output and any traceback."""
    if result.exit_code != code:
        tb = ""
        if result.exc_info and not isinstance(result.exception, SystemExit):
            tb = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(
            f"exit code {result.exit_code}, expected {code}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}\n{tb}"
        )
    # An expected failure is a clean exit, never an escaped exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


@pytest.fixture
def kubeq(redis_url: str) -> Kubeq:
    """kubeq(*args, code=0, url=..., input=...): run the CLI and check its exit code."""

    def run(
        *args: str,
        code: int = 0,
        url: str | None = None,
        input: str | None = None,
        env: dict[str, str | None] | None = None,
    ) -> Result:
        runner = CliRunner()
        result = runner.invoke(
            cli,
            ["--redis-url", url or redis_url, *args],
            input=input,
            env={**CLEAN_ENV, **(env or {})},
        )
        return expect(result, code)

    return run


@pytest.fixture
def queue_client(redis_url: str) -> Iterator[Client]:
    """A client of the queue the CLI uses by default (default/default)."""
    c = Client.from_url(redis_url, "default")
    yield c
    c.close()


class TinyWorker:
    """Claims and settles in a thread: completes tasks (result {"echo": payload}) except
    those of type "fail", which it dead-letters with a permanent error."""

    def __init__(self, redis_url: str, queue: str = "default") -> None:
        self.client = Client.from_url(redis_url, queue)
        self.stop = threading.Event()
        self.settled = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _settlement(self, claimed: Any, now: int) -> Settlement:
        if claimed.task.type == "fail":
            error = TaskError(type="ValueError", message="boom")
            return self.client.ops.failure(claimed, error, now, random.Random(), permanent=True)
        return self.client.ops.completion(claimed, {"echo": claimed.task.payload}, now)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                claim = self.client.claim("tiny-worker", 100)
                if not claim.tasks:
                    self.client.wait_for_work(0.05)
                    continue
                now = self.client.clock()
                self.client.settle([self._settlement(c, now) for c in claim.tasks])
                self.settled += len(claim.tasks)
        except BaseException as exc:  # surfaced by the fixture
            self.error = exc

    def __enter__(self) -> TinyWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.client.close()
        assert self.error is None, self.error


@pytest.fixture
def tiny_worker(redis_url: str) -> Iterator[TinyWorker]:
    with TinyWorker(redis_url) as w:
        yield w


def _dead_letter(client: Client, task_type: str = "fail", n: int = 1) -> list[str]:
    ids = client.submit_many([{"type": task_type, "payload": i} for i in range(n)])
    claim = client.claim("test-worker", n)
    now = client.clock()
    error = TaskError(type="ValueError", message="boom", traceback="Traceback: ...")
    client.settle(
        [client.ops.failure(c, error, now, random.Random(), permanent=True) for c in claim.tasks]
    )
    return ids


@pytest.fixture
def make_dead(queue_client: Client) -> Callable[..., list[str]]:
    """make_dead(n=1): submit n tasks and dead-letter them (claim + permanent failure)."""
    return lambda n=1, task_type="fail": _dead_letter(queue_client, task_type, n)
