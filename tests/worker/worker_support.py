"""Helpers for the worker tests: queue configs, bounded polling, worker subprocesses, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubeq.app import App
from kubeq.protocol import Backoff, QueueConfig
from kubeq.redis_server import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
_names = itertools.count()


def queue_config(**overrides: Any) -> QueueConfig:
    """Short leases and near-instant retries: fault tests finish in seconds."""
    base: dict[str, Any] = {
        "name": f"wq{os.getpid()}-{next(_names)}",
        "lease_seconds": 1.0,
        "heartbeat_seconds": 0.25,
        "max_attempts": 3,
        "backoff": Backoff(base_seconds=0.01, max_seconds=0.05),
    }
    return QueueConfig.model_validate({**base, **overrides})


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """`wait_until` for async tests: polls without blocking the loop the worker runs on."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, lv), v in samples.items() if n == name and want <= lv)


class WorkerProcess:
    """`python -m kubeq.worker` in a subprocess, its log in a file for failure messages."""

    def __init__(
        self,
        redis_url: str,
        config: QueueConfig,
        log_dir: Path,
        *,
        concurrency: int = 4,
        metrics_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = metrics_port if metrics_port is not None else free_port()
        self.log_path = log_dir / f"worker-{next(_names)}.log"
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "worker"), str(HERE)]),
            "KUBEQ_QUEUE_CONFIG": config.model_dump_json(),
            "KUBEQ_GRACE_SECONDS": "5",
            "KUBEQ_LOG_LEVEL": "DEBUG",
            **(env or {}),
        }
        argv = [
            sys.executable,
            "-m",
            "kubeq.worker",
            "--app",
            "kubeq_test_apps:app",
            "--redis-url",
            redis_url,
            "--queue",
            config.name,
            "--namespace",
            config.namespace,
            "--concurrency",
            str(concurrency),
            "--metrics-port",
            str(self.metrics_port),
        ]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return http_get(self.url("/readyz"), timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, what=f"worker {self.pid} ready")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return parse_metrics(http_get(self.url("/metrics"))[1])

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} did not exit:\n{self.log()}") from None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def holder_of(status_worker: str | None, proc: WorkerProcess) -> bool:
    """Worker ids are `host-pid-rand`: is this task held by that process?"""
    return bool(status_worker) and f"-{proc.pid}-" in str(status_worker)


@contextlib.asynccontextmanager
async def serving(
    redis_url: str, config: QueueConfig, app: App, **settings: Any
) -> AsyncIterator[asyncio.Event]:
    """A real worker (kubeq.worker.serve) on this loop for the block; yields its stop event.
    On leaving, it drains and must exit 0 within 30 s."""
    from kubeq.worker import WorkerSettings, serve

    ws = WorkerSettings(
        redis_url=redis_url, queue=config.name, queue_config=config, metrics_port=0, **settings
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(ws, app, stop))
    try:
        yield stop
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
