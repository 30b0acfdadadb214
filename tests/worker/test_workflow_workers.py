"""Issue 14: workflows run by real worker processes, one of them SIGKILLed mid-group."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_support import WorkerProcess, queue_config, wait_until

from kubeq.protocol import Client, QueueConfig, TaskStatus
from kubeq.protocol.workflow import Step, chain, chord

pytestmark = pytest.mark.slow

Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def config() -> QueueConfig:
    return queue_config()


@pytest.fixture
def spawn(redis_url: str, config: QueueConfig, tmp_path: Path) -> Iterator[Spawn]:
    procs: list[WorkerProcess] = []

    def start(**kw: Any) -> WorkerProcess:
        p = WorkerProcess(redis_url, config, tmp_path, **kw)
        procs.append(p)
        p.wait_ready()
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def client(redis_url: str, config: QueueConfig) -> Iterator[Client]:
    with Client.from_url(redis_url, config.name, config=config) as c:
        yield c


def test_a_chord_survives_a_worker_killed_mid_group_and_its_callback_runs_once(
    spawn: Spawn, client: Client
) -> None:
    a = spawn(concurrency=4)
    members = [Step("sleep", {"seconds": 0.6}) for _ in range(4)]
    wf = client.submit_workflow(chain(chord(members, Step("echo")), Step("echo")))
    wait_until(
        lambda: sum(s.status == "running" for s in client.workflow(wf).steps) == 4,
        what="worker A running the whole group",
    )
    a.proc.kill()
    a.wait()
    spawn(concurrency=2)
    spawn(concurrency=2)
    wait_until(lambda: client.workflow(wf).state == "completed", 30, "the workflow to complete")
    status = client.workflow(wf)
    assert [s.status for s in status.steps] == ["completed"] * 6
    callback, last = client.status(f"{wf}.5"), client.status(f"{wf}.6")
    # The chord callback got the four results (each from a second attempt), ran once.
    assert callback.result == [{"slept": 0.6, "attempt": 2}] * 4
    assert callback.attempts == 1
    assert last.result == callback.result
    assert client.stats().counters.get("completed") == 6


def test_workers_run_a_chain_feeding_each_result_and_the_on_failure_step(
    spawn: Spawn, client: Client
) -> None:
    spawn(concurrency=2)
    ok = client.submit_workflow(chain(Step("echo", {"n": 1}), Step("echo"), Step("echo")))
    bad = client.submit_workflow(chain(Step("permanent"), Step("echo")), on_failure=Step("echo"))
    wait_until(lambda: client.workflow(ok).state == "completed", what="the chain")
    assert client.result(f"{ok}.3", timeout=5) == {"n": 1}
    wait_until(lambda: client.status(f"{bad}.3").status == TaskStatus.COMPLETED, what="on-failure")
    assert client.workflow(bad).state == "failed"
    assert client.status(f"{bad}.2").status == TaskStatus.CANCELLED
    outcome = client.result(f"{bad}.3")
    assert outcome["status"] == "dead"
