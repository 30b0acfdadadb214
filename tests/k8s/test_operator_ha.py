"""Two operator replicas, as the chart runs them: real `kubeq operator` processes with kopf
peering through a ClusterKopfPeering in the emulator, and a real redis-server.

Exactly one replica acts; the other exports no queue gauges (dashboards `sum` the series
of all replicas); after the leader is killed (SIGKILL: no goodbye in the peering object)
the other takes over within the configured peering lifetime; one burst is one scale
decision, announced once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.k8s.emulator import KubeqEmulator, eventually, write_kubeconfig
from tests.k8s.test_operator import NS, condition, dep_path, events, get, taskqueue, tq_path

from kubeq.protocol import Client
from kubeq.redis_server import free_port
from kubeq_operator.kube.backend import TASK_QUEUES, KubeApi

pytestmark = [pytest.mark.kmock(cls=KubeqEmulator), pytest.mark.slow]
LIFETIME = 4  # seconds: KUBEQ_OPERATOR_PEERING_LIFETIME_SECONDS of both replicas
PEERING = "/apis/kopf.dev/v1/clusterkopfpeerings"
KUBEQ = str(Path(sys.executable).with_name("kubeq"))


class Replica:
    def __init__(self, name: str, priority: int, kubeconfig: Path, logs: Path) -> None:
        self.name, self.port = name, free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBEQ_OPERATOR_STANDALONE": "false",
            "KUBEQ_OPERATOR_PEERING_NAME": "kubeq",
            "KUBEQ_OPERATOR_PEERING_LIFETIME_SECONDS": str(LIFETIME),
            "KUBEQ_OPERATOR_PRIORITY": str(priority),
            "KUBEQ_OPERATOR_METRICS_PORT": str(self.port),
            "KUBEQ_OPERATOR_HEALTH_PORT": "0",
            "KUBEQ_OPERATOR_NAMESPACE": "",
        }
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [KUBEQ, "operator"], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    async def series(self, metric: str, **labels: str) -> dict[str, float]:
        """queue label → value of one operator metric, among the samples with `labels`
        (empty when not exported)."""

        def scrape() -> str:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as rsp:
                return str(rsp.read().decode())

        try:
            text = await asyncio.to_thread(scrape)
        except OSError:
            return {}
        return {
            s.labels.get("queue", ""): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
        }

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def replicas(kubeconfig: Path, logs: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        yield started
    finally:
        for r in started:
            r.stop()


def scaled_up(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e.get("reason") == "ScaledUp"]


async def test_one_replica_acts_and_the_other_takes_over(
    api: KubeApi, kmock: KubeqEmulator, redis_url: str, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url))
    await api.create(
        PEERING,
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kubeq"}},
    )
    queue = f"{NS}/ha"
    tq = taskqueue("ha", redis_url, autoscaling={"maxReplicas": 10})
    with replicas(kubeconfig, tmp_path) as started:
        leader = Replica("leader", 200, kubeconfig, tmp_path)
        started.append(leader)
        await api.create(TASK_QUEUES.path(NS), tq)
        await eventually(
            lambda: get(api, tq_path("ha")),
            lambda b: condition(b, "Ready").get("status") == "True",
            timeout=20,
            what="Ready=True from the leader",
        )
        follower = Replica("follower", 100, kubeconfig, tmp_path)
        started.append(follower)
        await eventually(
            lambda: api.get(f"{PEERING}/kubeq"),
            lambda p: len((p or {}).get("status") or {}) == 2,
            timeout=20,
            what="both replicas in the peering object",
        )
        # The follower pauses: no queue gauges from it (eventually: it may have started
        # before it saw the leader), while the leader exports them.
        await eventually(
            lambda: follower.series("kubeq_replicas_desired"),
            lambda s: queue not in s,
            timeout=10,
            what="no gauges from the paused follower",
        )
        await asyncio.sleep(1.0)
        assert queue in await leader.series("kubeq_replicas_desired")
        assert await follower.series("kubeq_queue_backlog_tasks") == {}

        with Client.from_url(redis_url, "ha", NS) as producer:
            producer.submit_many({"type": "t", "payload": i} for i in range(35))
        await eventually(
            lambda: get(api, dep_path("ha")),
            lambda d: d["spec"].get("replicas") == 4,
            timeout=10,
            what="the leader scales 1 → 4",
        )
        await asyncio.sleep(1.5)  # time for a second decision or Event, if one were made
        ups = scaled_up(await events(api, "ha"))
        assert [e["message"].split(":")[0] for e in ups] == ["1 → 4"]
        counted = (await leader.series("kubeq_scale_events_total", direction="up")).get(queue)
        assert counted == 1.0
        assert queue not in await follower.series("kubeq_replicas_desired")
        assert follower.process.poll() is None

        # The leader dies without a word; work arrives; the follower takes over.
        leader.stop(signal.SIGKILL)
        killed = time.monotonic()
        with Client.from_url(redis_url, "ha", NS) as producer:
            producer.submit_many({"type": "t", "payload": i} for i in range(40))
        await eventually(
            lambda: get(api, dep_path("ha")),
            lambda d: d["spec"].get("replicas") == 8,
            timeout=LIFETIME + 10,
            what="the follower takes over and scales 4 → 8",
        )
        takeover = time.monotonic() - killed
        print(f"takeover after SIGKILL: {takeover:.1f} s (peering lifetime {LIFETIME} s)")
        assert takeover <= LIFETIME + 5.0, f"takeover took {takeover:.1f} s"
        assert (await follower.series("kubeq_replicas_desired")).get(queue) == 8.0
        ups = scaled_up(await events(api, "ha"))
        assert sorted(e["message"].split(":")[0] for e in ups) == ["1 → 4", "4 → 8"]
