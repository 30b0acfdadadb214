"""Real Redis Sentinel: a primary, a replica and a sentinel (quorum 1), all started here on
free ports; a producer and a real worker process speak through redis+sentinel://. The
primary is SIGKILLed mid-run (issue 9, "How to prove it").

What may be lost is bounded by asynchronous replication: writes the primary acknowledged
but had not yet sent to the replica when it died. On one host that window is a fraction
of a millisecond, too small to prove anything, so the primary is reached through a TCP
proxy (the sentinel monitors the proxy's address, so it leaves the replica's link alone)
and the test freezes the replication link, only it, for FREEZE_S before the kill: the
replication window is then exactly [freeze, kill]. The test checks that every lost
acknowledgement falls in that window (and that some did, so the window was real), that
nothing acknowledged after the failover is lost, and that the worker completes every task
that survived.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from model_support import CuttingProxy

import redis
from kubeq.protocol import Client, KubeqError, QueueConfig, TaskNotFound, TaskStatus
from kubeq.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
SERVICE = "kq"
DOWN_AFTER_MS = 400
FREEZE_S = 0.3  # the replication window the test creates before the kill
SLACK_S = 0.05  # writes acknowledged just before the freeze may still be in flight


@dataclass
class SentinelSetup:
    primary: RedisServer
    replica: RedisServer
    link: CuttingProxy  # the primary's address as everyone sees it (sentinel included)
    sentinel_port: int
    sentinel_proc: subprocess.Popen[bytes]
    directory: Path

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}"

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, decode_responses=True, socket_timeout=2)

    def master_port(self) -> int:
        s = self.sentinel()
        try:
            _, port = s.sentinel_get_master_addr_by_name(SERVICE)
            return int(port)
        finally:
            s.close()


def _wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.exceptions.RedisError):
            if pred():  # type: ignore[operator]
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    for d in ("p", "r"):
        (tmp_path / d).mkdir()
    with RedisServer(directory=tmp_path / "p") as primary:
        link = CuttingProxy(primary.port)
        replica = RedisServer(
            directory=tmp_path / "r",
            extra=("--replicaof", "127.0.0.1", str(link.port)),
        )
        with replica, contextlib.closing(link):
            port = free_port()
            conf = tmp_path / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {link.port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 4000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            proc = subprocess.Popen(
                [primary.executable, str(conf), "--sentinel", "--logfile", str(tmp_path / "s.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            setup = SentinelSetup(primary, replica, link, port, proc, tmp_path)
            try:

                def replica_known() -> bool:
                    s = setup.sentinel()
                    try:
                        replicas = s.sentinel_slaves(SERVICE)
                    finally:
                        s.close()
                    return any(r.get("master-link-status") == "ok" for r in replicas)

                _wait(replica_known, 15, "the sentinel to see a synced replica")
                yield setup
            finally:
                proc.kill()
                proc.wait(10)


@dataclass
class Producer:
    """Submits tasks one at a time with an idempotency key per logical job, retrying a
    refused submit with the same key, as a careful producer does."""

    url: str
    config: QueueConfig
    total: int
    acked: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (id, when)
    failures: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = Client.from_url(self.url, self.config.name, config=self.config, timeout=1.0)
        try:
            for i in range(self.total):
                key = f"job-{i:05d}"
                while True:
                    try:
                        tid = client.submit("echo", {"i": i}, idempotency_key=key)
                    except KubeqError as exc:
                        self.failures.append(type(exc).__name__)
                        time.sleep(0.05)
                        continue
                    except Exception as exc:  # a raw exception is a finding, not a crash
                        self.raw.append(f"{type(exc).__name__}: {exc}")
                        time.sleep(0.05)
                        continue
                    self.acked[key] = (tid, time.monotonic())
                    break
                time.sleep(0.01)
        finally:
            client.close()
            self.done.set()


def _worker(url: str, config: QueueConfig, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "worker"), str(REPO / "tests" / "worker")]),
        "KUBEQ_QUEUE_CONFIG": config.model_dump_json(),
        "KUBEQ_GRACE_SECONDS": "2",
    }
    argv = [
        sys.executable,
        "-m",
        "kubeq.worker",
        "--app",
        "kubeq_test_apps:app",
        "--redis-url",
        url,
        "--queue",
        config.name,
        "--concurrency",
        "4",
        "--metrics-port",
        str(free_port()),
    ]
    return subprocess.Popen(
        argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_producer_and_worker_follow_a_sentinel_failover(
    sentinel_setup: SentinelSetup, tmp_path: Path
) -> None:
    setup = sentinel_setup
    config = QueueConfig(name="sentinel", lease_seconds=3, heartbeat_seconds=1, max_attempts=5)
    old_port = setup.link.port
    producer = Producer(setup.url, config, total=400)
    thread = threading.Thread(target=producer.run, daemon=True)
    worker = _worker(setup.url, config, tmp_path / "worker.log")
    try:
        thread.start()
        _wait(lambda: len(producer.acked) >= 100, 30, "100 acknowledged submits")
        setup.link.replication_frozen = True  # the replica stops receiving: the window
        frozen_at = time.monotonic()
        time.sleep(FREEZE_S)
        killed_at = time.monotonic()
        os.kill(setup.primary.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        _wait(lambda: setup.master_port() != old_port, 30, "the sentinel to promote the replica")
        promoted_at = time.monotonic()
        assert setup.master_port() == setup.replica.port
        thread.join(60)
        assert producer.done.is_set(), "the producer did not finish after the failover"

        survivor = Client.from_url(setup.url, config.name, config=config)
        try:

            def statuses() -> dict[str, TaskStatus | None]:
                out: dict[str, TaskStatus | None] = {}
                for key, (tid, _) in producer.acked.items():
                    try:
                        out[key] = survivor.status(tid).status
                    except TaskNotFound:
                        out[key] = None
                return out

            def settled() -> bool:
                return all(s in (None, TaskStatus.COMPLETED) for s in statuses().values())

            _wait(settled, 40, "every surviving task to complete")
            final = statuses()
        finally:
            survivor.close()
        assert worker.poll() is None, "the worker died during the failover"
    finally:
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
        worker.wait(10)
        producer.done.wait(5)

    lost = {k: producer.acked[k][1] for k, s in final.items() if s is None}
    in_window = {k for k, (_, at) in producer.acked.items() if frozen_at <= at <= killed_at}
    outside = sorted(k for k, at in lost.items() if at < frozen_at - SLACK_S)
    after_failover = sorted(k for k, at in lost.items() if at >= promoted_at)
    print(
        f"sentinel failover: {len(producer.acked)} acknowledged, {len(in_window)} of them in "
        f"the {FREEZE_S * 1000:.0f} ms replication window, {len(lost)} lost; failover took "
        f"{(promoted_at - killed_at) * 1000:.0f} ms; {len(producer.failures)} refused submits "
        "retried"
    )
    assert producer.raw == [], f"the producer met raw exceptions: {producer.raw[:3]}"
    assert len(producer.acked) == 400
    assert in_window, "nothing was acknowledged in the window: the test proved nothing"
    assert after_failover == [], f"acknowledged after the failover, then lost: {after_failover}"
    assert outside == [], f"lost though acknowledged before the replication window: {outside}"
    assert set(lost) >= in_window, "writes the replica never received survived: impossible"
