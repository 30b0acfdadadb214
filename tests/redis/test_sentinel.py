"""Real Redis Sentinel: a primary, a replica and a sentinel (quorum 1), all started here on
free ports; a producer and a real worker process speak through redis+sentinel://. The
primary is SIGKILLed mid-run (issue 9, "How to prove it").

What may be lost is bounded by asynchronous replication: a write the primary
acknowledged but had not yet sent to the replica when it died. We measure that window
two ways: the replica's replication offset behind the primary's just before the kill
(bytes), and the age of the youngest lost acknowledgement at the kill (ms). Nothing
acknowledged after the failover may be lost, and every surviving task completes.
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

import redis
from kubeq.protocol import Client, KubeqError, QueueConfig, TaskNotFound, TaskStatus
from kubeq.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
SERVICE = "kq"
DOWN_AFTER_MS = 400
REPLICATION_WINDOW_MS = 1000


@dataclass
class SentinelSetup:
    primary: RedisServer
    replica: RedisServer
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
        replica = RedisServer(
            directory=tmp_path / "r",
            extra=("--replicaof", "127.0.0.1", str(primary.port)),
        )
        with replica:
            port = free_port()
            conf = tmp_path / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 1\n"
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
            setup = SentinelSetup(primary, replica, port, proc, tmp_path)
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


def _offset(r: redis.Redis, field_name: str) -> int:
    return int(r.info("replication")[field_name])


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
    old_port = setup.primary.port
    producer = Producer(setup.url, config, total=400)
    thread = threading.Thread(target=producer.run, daemon=True)
    worker = _worker(setup.url, config, tmp_path / "worker.log")
    try:
        thread.start()
        _wait(lambda: len(producer.acked) >= 100, 30, "100 acknowledged submits")
        # The replication window, just before the kill: how far the replica is behind.
        p = redis.Redis(port=old_port)
        r = redis.Redis(port=setup.replica.port)
        behind_bytes = _offset(p, "master_repl_offset") - _offset(r, "master_repl_offset")
        p.close()
        r.close()
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
    after_failover = [k for k, at in lost.items() if at >= promoted_at]
    window_ms = max((killed_at - at) * 1000 for at in lost.values()) if lost else 0.0
    print(
        f"sentinel failover: {len(producer.acked)} acknowledged, {len(lost)} lost "
        f"(youngest {window_ms:.0f} ms before the kill), replica {behind_bytes} bytes "
        f"behind at the kill, failover took {(promoted_at - killed_at) * 1000:.0f} ms, "
        f"{len(producer.failures)} refused submits retried"
    )
    assert producer.raw == [], f"the producer met raw exceptions: {producer.raw[:3]}"
    assert len(producer.acked) == 400
    assert after_failover == [], f"acknowledged after the failover, then lost: {after_failover}"
    # Replication to a local replica runs well under a second behind: a lost acknowledgement
    # older than that was not lost to the replication window but to a bug.
    assert window_ms <= REPLICATION_WINDOW_MS, f"lost acknowledgements {window_ms:.0f} ms old"
