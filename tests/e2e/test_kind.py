"""End to end on a real Kubernetes cluster (kind): opt-in with KUBEQ_E2E_KIND=1.

Builds both images with docker, loads them into a fresh kind cluster, installs the chart
with the helm binary, runs a Redis, applies examples/telemetry.yaml (images swapped for
the ones just built), submits a burst of tasks through a port-forward and watches the
operator scale the workers up, finish every task and scale back down.

Needs docker (with a daemon), kind, kubectl and helm. It has NOT been run in this
repository's CI (no Docker engine there); see docs/kubernetes.md.
Reuse a cluster with KUBEQ_E2E_KIND_CLUSTER=<name> (it is then not deleted).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("docker", "kind", "kubectl", "helm")
TAG = "e2e"
WORKER_IMAGE, OPERATOR_IMAGE = f"kubeq-worker:{TAG}", f"kubeq-operator:{TAG}"
OPERATOR_NS, APP_NS = "kubeq-system", "kubeq-e2e"
QUEUE = "telemetry"
BURST = 6000
T = TypeVar("T")


def _skip_reason() -> str | None:
    if os.environ.get("KUBEQ_E2E_KIND") != "1":
        return "kind end-to-end test is opt-in: set KUBEQ_E2E_KIND=1 (needs docker, kind, helm)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"KUBEQ_E2E_KIND=1 but {', '.join(missing)} not on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    if info.returncode != 0:
        return "KUBEQ_E2E_KIND=1 but the Docker daemon is not reachable (`docker info` failed)"
    return None


_REASON = _skip_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def run(*cmd: str, input: str | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def eventually(probe: Callable[[], T], ok: Callable[[T], bool], *, timeout: float, what: str) -> T:
    """Poll `probe` until `ok` holds; fail with the last value after `timeout` seconds."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if ok(last):
                return last
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            last = exc  # type: ignore[assignment]
        time.sleep(2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    reuse = os.environ.get("KUBEQ_E2E_KIND_CLUSTER")
    name = reuse or f"kubeq-e2e-{uuid.uuid4().hex[:6]}"
    if not reuse:
        run("kind", "create", "cluster", "--name", name, "--wait", "180s", timeout=600)
    try:
        run("kubectl", "config", "use-context", f"kind-{name}")
        yield name
    finally:
        if not reuse:
            run("kind", "delete", "cluster", "--name", name, timeout=300)


@pytest.fixture(scope="module")
def images(cluster: str) -> None:
    builds = {WORKER_IMAGE: "Dockerfile.worker", OPERATOR_IMAGE: "Dockerfile.operator"}
    for image, dockerfile in builds.items():
        run("docker", "build", "-f", str(ROOT / dockerfile), "-t", image, str(ROOT), timeout=1800)
        run("kind", "load", "docker-image", image, "--name", cluster, timeout=600)


REDIS = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: redis, namespace: {APP_NS}}}
spec:
  selector: {{matchLabels: {{app: redis}}}}
  template:
    metadata: {{labels: {{app: redis}}}}
    spec:
      containers:
        - name: redis
          image: redis:7-alpine
          args: ["--save", "", "--appendonly", "no"]
          ports: [{{containerPort: 6379}}]
          readinessProbe: {{tcpSocket: {{port: 6379}}, periodSeconds: 2}}
---
apiVersion: v1
kind: Service
metadata: {{name: redis, namespace: {APP_NS}}}
spec:
  selector: {{app: redis}}
  ports: [{{port: 6379, targetPort: 6379}}]
"""


@pytest.fixture(scope="module")
def installed(images: None) -> None:
    run("kubectl", "create", "namespace", APP_NS)
    run("kubectl", "apply", "-f", "-", input=REDIS)
    run("kubectl", "-n", APP_NS, "rollout", "status", "deploy/redis", "--timeout=300s")
    run(
        "helm", "install", "kubeq", str(ROOT / "charts" / "kubeq"),
        "--namespace", OPERATOR_NS, "--create-namespace",
        "--set", "operator.image.repository=kubeq-operator",
        "--set", f"operator.image.tag={TAG}",
        "--set", "operator.image.pullPolicy=Never",
        "--wait", "--timeout", "5m",
        timeout=400,
    )  # fmt: skip
    queue = yaml.safe_load((ROOT / "examples" / "telemetry.yaml").read_text())
    queue["metadata"]["namespace"] = APP_NS
    queue["spec"]["redis"]["url"] = "redis://redis:6379/0"
    queue["spec"]["worker"].update(image=WORKER_IMAGE, imagePullPolicy="Never")
    run("kubectl", "apply", "-f", "-", input=yaml.safe_dump(queue))


def get(kind: str, name: str) -> dict[str, Any]:
    return json.loads(run("kubectl", "-n", APP_NS, "get", kind, name, "-o", "json", timeout=30))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(installed: None) -> Iterator[str]:
    port = free_port()
    forward = subprocess.Popen(
        ["kubectl", "-n", APP_NS, "port-forward", "svc/redis", f"{port}:6379"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert forward.stdout is not None
        assert b"Forwarding from" in forward.stdout.readline()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        forward.terminate()
        forward.wait(timeout=30)


def test_burst_scales_up_completes_and_scales_down(redis_url: str) -> None:
    from kubeq.protocol import Client, QueueConfig

    deployment = f"{QUEUE}-worker"
    eventually(
        lambda: get("deployment", deployment)["status"].get("readyReplicas", 0),
        lambda ready: ready >= 1,
        timeout=300, what="the first worker (minReplicas 1) to be ready",
    )  # fmt: skip
    cm = get("configmap", f"{QUEUE}-queue-config")
    config = QueueConfig.model_validate_json(cm["data"]["queue-config.json"])
    rng = random.Random(7)
    with Client.from_url(redis_url, QUEUE, APP_NS, config) as client:
        ids = client.submit_many(
            {
                "type": "telemetry.ingest",
                "payload": {
                    "device_id": f"dev-{i % 500}", "metric": "temperature",
                    "value": rng.uniform(15, 25), "ts": i, "seq": i // 500,
                },
            }
            for i in range(BURST)
        )  # fmt: skip
        assert len(set(ids)) == BURST

        scaled = eventually(
            lambda: get("taskqueue", QUEUE)["status"],
            lambda s: s.get("desiredReplicas", 0) > 1 and s.get("replicas", 0) > 1,
            timeout=300, what="the operator to scale the workers up",
        )  # fmt: skip
        assert scaled["desiredReplicas"] <= 8  # maxReplicas

        eventually(
            client.stats,
            lambda st: st.backlog == 0 and st.delayed == 0,  # retries wait in delayed
            timeout=900, what="every task to be processed",
        )  # fmt: skip
        done = [str(client.status(task_id).status) for task_id in rng.sample(ids, 200)]
        assert set(done) <= {"completed", "dead"}, done
        assert done.count("completed") >= 190  # the example fails ~1% downstream, retried

    eventually(
        lambda: get("deployment", deployment)["spec"]["replicas"],
        lambda replicas: replicas == 1,
        timeout=600, what="the workers to scale back down to minReplicas",
    )  # fmt: skip
