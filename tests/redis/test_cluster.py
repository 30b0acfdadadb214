"""The protocol on a real 3-node Redis Cluster: every script's keys live in one slot."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

import redis
from kubeq.protocol import Client, QueueConfig, TaskError, TaskStatus
from kubeq.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    # Cluster nodes also listen on port + 10000, so stay at or below 55535.
    nodes = [
        RedisServer(
            port=free_port(max_port=55535),
            extra=("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
        )
        for _ in range(3)
    ]
    try:
        for node in nodes:
            node.extra = (*node.extra, "--cluster-config-file", str(node.directory / "nodes.conf"))
            node.start()
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli comes with redis-server (Debian: redis-tools)"
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        probe = redis.Redis(port=nodes[0].port, decode_responses=True)
        while probe.cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.1)
        probe.close()
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}/0"
    finally:
        for node in nodes:
            node.close()


def test_the_whole_protocol_runs_on_a_cluster(cluster_url: str) -> None:
    import random

    queues = [QueueConfig(name=f"c{i}") for i in range(6)]
    clients = [Client.from_url(cluster_url, q.name, config=q) for q in queues]
    for c in clients:
        ids = c.submit_many([{"type": "t", "payload": i} for i in range(20)])
        c.submit("t", idempotency_key="k")
        claim = c.claim("w", 10)
        now = c.clock()
        results = c.settle(
            [
                c.ops.completion(claim.tasks[0], "ok", now),
                c.ops.failure(
                    claim.tasks[1],
                    TaskError(type="E", message="m"),
                    now,
                    random.Random(),
                    permanent=True,
                ),
                c.ops.release(claim.tasks[2]),
            ]
        )
        assert results == [True, True, True]
        c.heartbeat(
            "w",
            [(t.id, t.token, t.level_index) for t in claim.tasks[3:]],
            __import__("kubeq").protocol.WorkerInfo(id="w"),
        )
        c.reap()
        assert c.cancel(ids[-1]) == "cancelled"
        assert c.status(ids[0]).status == TaskStatus.COMPLETED
        assert c.result(ids[0], timeout=2) == "ok"
        assert c.requeue_dead() == [ids[1]]
        stats = c.stats()
        assert (stats.in_flight, stats.ready) == (7, 20 + 1 - 10 + 1 + 1 - 1)
        assert len(c.workers()) == 1
        assert c.eviction_policy() == "noeviction"  # INFO answered per node
    # Different queues spread over the cluster's nodes.
    owners = {clients[0].redis.keyslot(c.keys.tasks) // 5462 for c in clients}
    assert len(owners) > 1
    for c in clients:
        c.close()
