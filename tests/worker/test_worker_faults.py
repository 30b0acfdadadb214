"""Worker subprocesses (`python -m kubeq.worker`) under faults: kills, pauses, drains, outages."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_support import WorkerProcess, holder_of, http_get, metric, queue_config, wait_until

from kubeq.protocol import Client, QueueConfig, TaskStatus
from kubeq.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow

Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def config() -> QueueConfig:
    return queue_config()


@pytest.fixture
def spawn(redis_url: str, config: QueueConfig, tmp_path: Path) -> Iterator[Spawn]:
    procs: list[WorkerProcess] = []

    def start(url: str = redis_url, **kw: Any) -> WorkerProcess:
        p = WorkerProcess(url, config, tmp_path, **kw)
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


def held_by(client: Client, tid: str, proc: WorkerProcess) -> bool:
    st = client.status(tid)
    return st.status == TaskStatus.RUNNING and holder_of(st.worker, proc)


def test_a_worker_process_runs_tasks_serves_metrics_and_exits_0_on_sigterm(
    spawn: Spawn, client: Client, config: QueueConfig
) -> None:
    w = spawn()
    ids = client.submit_many([{"type": "echo", "payload": i} for i in range(20)])
    wait_until(lambda: client.stats().counters.get("completed") == 20, what="20 completions")
    assert [client.result(i) for i in ids] == list(range(20))
    m = w.metrics()
    assert metric(m, "kubeq_tasks_completed_total", queue=config.full_name, task_type="echo") == 20
    assert http_get(w.url("/healthz"))[0] == 200
    (info,) = client.workers()
    assert holder_of(info.id, w)
    assert info.concurrency == 4
    assert not info.draining
    w.signal(signal.SIGTERM)
    assert w.wait() == 0, w.log()


def test_sigkill_mid_task_another_worker_completes_it_once(spawn: Spawn, client: Client) -> None:
    a = spawn(concurrency=1)
    tid = client.submit("sleep", {"seconds": 0.5})
    wait_until(lambda: held_by(client, tid, a), what="worker A running the task")
    a.proc.kill()
    a.wait()
    b = spawn()
    wait_until(lambda: client.status(tid).status == TaskStatus.COMPLETED, 20, "completion")
    st = client.status(tid)
    assert holder_of(st.worker, b)
    assert st.attempts == 2
    assert client.stats().counters.get("completed") == 1


def test_sigterm_drain_releases_unfinished_tasks_and_loses_none(
    spawn: Spawn, client: Client
) -> None:
    w = spawn(concurrency=2, env={"KUBEQ_GRACE_SECONDS": "0.5"})
    slow = [client.submit("sleep", {"seconds": 60}) for _ in range(2)]
    wait_until(lambda: all(held_by(client, t, w) for t in slow), what="both running")
    queued = [client.submit("noop") for _ in range(3)]  # no free slot: they stay queued
    w.signal(signal.SIGTERM)
    assert w.wait() == 0, w.log()
    for t in [*slow, *queued]:
        st = client.status(t)
        assert (st.status, st.attempts) == (TaskStatus.PENDING, 0), st
    stats = client.stats()
    assert (stats.ready, stats.in_flight, stats.counters.get("released")) == (5, 0, 2)
    # Whoever comes next finishes the quick ones: nothing was lost.
    spawn()
    wait_until(
        lambda: all(client.status(t).status == TaskStatus.COMPLETED for t in queued),
        what="queued tasks done by the next worker",
    )


def test_a_second_sigterm_releases_everything_now(spawn: Spawn, client: Client) -> None:
    w = spawn(concurrency=1, env={"KUBEQ_GRACE_SECONDS": "120"})
    tid = client.submit("sleep", {"seconds": 60})
    wait_until(lambda: held_by(client, tid, w), what="running")
    w.signal(signal.SIGTERM)
    wait_until(lambda: any(x.draining for x in client.workers()), what="draining")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.log()
    assert client.status(tid).status == TaskStatus.PENDING


def test_a_paused_worker_cannot_complete_a_task_another_worker_took_over(
    spawn: Spawn, client: Client
) -> None:
    a = spawn(concurrency=1)
    tid = client.submit("sleep", {"seconds": 1.5})
    wait_until(lambda: held_by(client, tid, a), what="worker A running the task")
    a.signal(signal.SIGSTOP)  # past its lease: it cannot heartbeat
    b = spawn()
    wait_until(lambda: client.status(tid).status == TaskStatus.COMPLETED, 20, "B completes")
    a.signal(signal.SIGCONT)
    # On resume A either finishes first (its late settle is refused by fencing) or hears
    # from a heartbeat first that its lease is lost (it abandons the task): both are fine,
    # which one comes first is the scheduler's choice.
    wait_until(
        lambda: (
            metric(a.metrics(), "kubeq_settles_refused_total")
            + metric(a.metrics(), "kubeq_leases_lost_total")
            >= 1
        ),
        10,
        "A's late settle refused or its lease known lost",
    )
    st = client.status(tid)
    assert st.status == TaskStatus.COMPLETED
    assert holder_of(st.worker, b)
    assert metric(a.metrics(), "kubeq_tasks_completed_total") == 0
    assert client.stats().counters.get("completed") == 1


def test_redis_restart_loses_no_task_and_workers_recover(
    config: QueueConfig, tmp_path: Path
) -> None:
    server = RedisServer(appendonly=True, port=free_port(), directory=tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    workers: list[WorkerProcess] = []
    try:
        for _ in range(2):
            workers.append(WorkerProcess(server.url, config, tmp_path, concurrency=4))
        for w in workers:
            w.wait_ready()
        with Client.from_url(server.url, config.name, config=config) as c:
            ids = c.submit_many(
                [{"type": "sleep", "payload": {"seconds": 0.05}} for _ in range(200)]
            )
            wait_until(lambda: c.stats().counters.get("completed", 0) >= 20, what="progress")
        server.stop()
        wait_until(
            lambda: all(http_get(w.url("/readyz"))[0] == 503 for w in workers),
            10,
            "readyz 503 while Redis is down",
        )
        assert all(http_get(w.url("/healthz"))[0] == 200 for w in workers)
        server.start()
        with Client.from_url(server.url, config.name, config=config) as c:
            wait_until(
                lambda: c.stats().counters.get("completed", 0) >= 200,
                60,
                "all tasks completed after the restart",
            )
            assert all(c.status(i).status == TaskStatus.COMPLETED for i in ids)
            assert c.stats().counters["completed"] == 200  # each recorded exactly once
        for w in workers:
            w.wait_ready()
            assert metric(w.metrics(), "kubeq_redis_errors_total") > 0
            w.signal(signal.SIGTERM)
            assert w.wait() == 0, w.log()
    finally:
        for w in workers:
            w.stop()
        server.close()


@pytest.mark.parametrize("phase", ["running", "settling"])
def test_sigterm_with_redis_gone_exits_within_the_grace_period(
    config: QueueConfig, tmp_path: Path, phase: str
) -> None:
    """KUBEQ_GRACE_SECONDS is the whole budget from SIGTERM to exit (Kubernetes kills the pod
    when terminationGracePeriodSeconds runs out): every wait of the drain (the claim in
    flight, the handlers, the release, the settle flush, the farewell) fits in it, also
    when Redis is gone and none of them can succeed. Nothing is lost: the leases expire
    and the reaper hands the tasks out again."""
    grace = 3.0
    (tmp_path / "redis").mkdir()
    server = RedisServer(appendonly=True, port=free_port(), directory=tmp_path / "redis")
    server.start()
    w = None
    try:
        w = WorkerProcess(
            server.url, config, tmp_path, concurrency=2,
            env={"KUBEQ_GRACE_SECONDS": str(grace)},
        )  # fmt: skip
        w.wait_ready()
        with Client.from_url(server.url, config.name, config=config) as c:
            seconds = 60 if phase == "running" else 0.5  # settling: done while Redis is gone
            tid = c.submit("sleep", {"seconds": seconds})
            wait_until(lambda: c.status(tid).status == TaskStatus.RUNNING, what="running")
        server.stop()
        if phase == "settling":
            time.sleep(1.0)  # the handler finished; its settle keeps failing
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        code = w.wait(30)
        took = time.monotonic() - started
        # within the 2 s the operator leaves between the worker's grace and the pod's
        assert took < grace + 2.0, f"exit took {took:.1f}s with grace {grace}s\n{w.log()}"
        assert code == 0, w.log()
    finally:
        if w is not None:
            w.stop()
        server.close()
