"""The emulator answers as an API server where the operator has a path for it: so that the
operator tests can fail for the right reasons. No kopf here."""

from __future__ import annotations

from typing import Any

import pytest
from tests.k8s.emulator import KubeqEmulator
from tests.k8s.test_operator import NS, taskqueue

from kubeq_operator.kube.backend import DEPLOYMENTS, TASK_QUEUES, ApiError, KubeApi

pytestmark = pytest.mark.kmock(cls=KubeqEmulator)


def deployment(name: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", **container}]}}},
    }


@pytest.mark.parametrize(
    ("container", "status", "fragment"),
    [
        ({"env": [{"name": "LOG_LEVEL=debug", "value": "1"}]}, 422, "environment variable"),
        ({"resources": {"limits": {"cpu": "2 cores"}}}, 400, "cannot be handled"),
        ({"livenessProbe": {"periodSeconds": 5}}, 422, "must specify a handler"),
        ({"readinessProbe": {"httpGet": {"path": "/", "port": "web"}}}, 422, "port"),
    ],
)
async def test_invalid_deployments_are_refused(
    api: KubeApi, container: dict[str, Any], status: int, fragment: str
) -> None:
    with pytest.raises(ApiError) as caught:
        await api.create(DEPLOYMENTS.path(NS), deployment("bad", **container))
    assert caught.value.status == status
    assert fragment in caught.value.message
    # And as a patch of a valid one: refused whole, the stored object unchanged.
    await api.create(DEPLOYMENTS.path(NS), deployment("ok"))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "c", **container}]}}}}
    with pytest.raises(ApiError):
        await api.patch(DEPLOYMENTS.path(NS, "ok"), patch)
    stored = await api.get(DEPLOYMENTS.path(NS, "ok"))
    assert stored["spec"]["template"]["spec"]["containers"] == [{"name": "c", "image": "i"}]


async def test_status_subresource_writes_only_status(api: KubeApi, redis_url: str) -> None:
    await api.create(TASK_QUEUES.path(NS), taskqueue("s", redis_url))
    path = TASK_QUEUES.path(NS, "s")
    await api.patch(path + "/status", {"status": {"waiting": 3}, "spec": {"replicas": 9}})
    await api.patch(path, {"status": {"waiting": 99}, "metadata": {"labels": {"a": "b"}}})
    body = await api.get(path)
    assert body["status"] == {"waiting": 3}
    assert "replicas" not in body["spec"]
    assert body["metadata"]["labels"] == {"a": "b"}


async def test_owned_objects_are_garbage_collected(api: KubeApi, redis_url: str) -> None:
    owner = await api.create(TASK_QUEUES.path(NS), taskqueue("gc", redis_url))
    ref = {
        "apiVersion": "kubeq.io/v1alpha1",
        "kind": "TaskQueue",
        "name": "gc",
        "uid": owner["metadata"]["uid"],
    }
    child = deployment("gc-worker")
    child["metadata"]["ownerReferences"] = [ref]
    await api.create(DEPLOYMENTS.path(NS), child)
    await api.create(DEPLOYMENTS.path(NS), deployment("unowned"))
    await api.request("DELETE", TASK_QUEUES.path(NS, "gc"))
    assert await api.get(DEPLOYMENTS.path(NS, "gc-worker")) is None
    assert await api.get(DEPLOYMENTS.path(NS, "unowned")) is not None
