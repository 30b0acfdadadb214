"""The operator under real kopf, against the Kubernetes emulator and a real redis-server.

The emulator garbage-collects owned objects but runs no controllers: no
ReplicaSets or Pods (tests create Pod objects), and Deployment status stays empty.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.k8s.emulator import (
    KubeqEmulator,
    eventually,
    running_operator,
)

import redis
from kubeq.protocol import Client, QueueKeys, WorkerInfo
from kubeq.redis_server import free_port
from kubeq_operator.core.manifests import (
    DELETION_COST_ANNOTATION,
    config_map_name,
    deployment_name,
    labels,
    metrics_service_name,
    pdb_name,
)
from kubeq_operator.kube.backend import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    PDBS,
    PODS,
    SERVICES,
    TASK_QUEUES,
    KubeApi,
)

pytestmark = pytest.mark.kmock(cls=KubeqEmulator)
NS = "default"
IMAGE = "registry.example/telemetry-worker:1.0"


def taskqueue(name: str, redis_url: str, **spec: Any) -> dict[str, Any]:
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 5,
        "targetBacklogPerReplica": 10,
        "pollIntervalSeconds": 0.5,
        "scaleDownStabilizationSeconds": 1,
        "cooldownToZeroSeconds": 1,
        **spec.pop("autoscaling", {}),
    }
    return {
        "apiVersion": "kubeq.io/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "redis": {"url": redis_url},
            "worker": {"image": IMAGE, "app": "telemetry.tasks:app", "concurrency": 4},
            "autoscaling": autoscaling,
            **spec,
        },
    }


async def get(api: KubeApi, path: str) -> dict[str, Any]:
    return dict(await api.get(path) or {})


def condition(body: dict[str, Any], type: str) -> dict[str, Any]:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type), {})


async def events(api: KubeApi, name: str) -> list[dict[str, Any]]:
    listing = await api.request("GET", f"/api/v1/namespaces/{NS}/events")
    items = (listing or {}).get("items") or []
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]


def has_event(reason: str, type: str = "Normal") -> Any:
    return lambda evs: any(e.get("reason") == reason and e.get("type") == type for e in evs)


def tq_path(name: str) -> str:
    return TASK_QUEUES.path(NS, name)


def dep_path(name: str) -> str:
    return DEPLOYMENTS.path(NS, deployment_name(name))


async def test_create_update_and_repair(api: KubeApi, redis_url: str) -> None:
    async with running_operator(clients=[api]):
        await api.create(TASK_QUEUES.path(NS), taskqueue("ingest", redis_url))
        tq = await eventually(
            lambda: get(api, tq_path("ingest")),
            lambda b: condition(b, "Ready").get("status") == "True",
            what="Ready=True",
        )
        uid = tq["metadata"]["uid"]
        status = tq["status"]
        assert status["observedGeneration"] == tq["metadata"]["generation"]
        assert status["selector"] == (
            "app.kubernetes.io/instance=ingest,app.kubernetes.io/name=kubeq-worker"
        )
        assert condition(tq, "RedisReachable")["status"] == "True"

        dep = await get(api, dep_path("ingest"))
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == IMAGE
        assert {"name": "KUBEQ_CONCURRENCY", "value": "4"} in container["env"]
        assert dep["spec"]["replicas"] == 1  # minReplicas: the scaler owns it from here
        for path in (
            dep_path("ingest"),
            SERVICES.path(NS, metrics_service_name("ingest")),
            PDBS.path(NS, pdb_name("ingest")),
            CONFIG_MAPS.path(NS, config_map_name("ingest")),
        ):
            (owner,) = (await get(api, path))["metadata"]["ownerReferences"]
            assert owner["uid"] == uid
            assert owner["kind"] == "TaskQueue"
            assert owner["controller"] is True
        # The config is published for producers.
        r = redis.Redis.from_url(redis_url)
        assert r.exists(QueueKeys(NS, "ingest").config)
        r.close()

        # A spec change rolls out: image and concurrency.
        patch = {"spec": {"worker": {"image": IMAGE + "-b", "concurrency": 8}}}
        await api.patch(tq_path("ingest"), patch)
        dep = await eventually(
            lambda: get(api, dep_path("ingest")),
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE + "-b",
            what="the new image",
        )
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "KUBEQ_CONCURRENCY", "value": "8"} in env
        await eventually(
            lambda: get(api, tq_path("ingest")),
            lambda b: b["status"].get("observedGeneration") == b["metadata"]["generation"],
            what="observedGeneration",
        )

        # Someone edits the Deployment by hand: put back.
        hand_edit = {
            "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "x"}]}}}
        }
        await api.patch(dep_path("ingest"), hand_edit)
        await eventually(
            lambda: get(api, dep_path("ingest")),
            lambda d: (
                d["spec"]["template"]["spec"]["containers"][0].get("image") == IMAGE + "-b"
                and len(d["spec"]["template"]["spec"]["containers"][0].get("env", [])) > 5
            ),
            what="the hand-edited Deployment restored",
        )

        # Someone deletes it: re-created, still owned.
        await api.request("DELETE", dep_path("ingest"))
        dep = await eventually(
            lambda: get(api, dep_path("ingest")), bool, what="the deleted Deployment re-created"
        )
        assert dep["metadata"]["ownerReferences"][0]["uid"] == uid
        await eventually(lambda: events(api, "ingest"), has_event("Restored"), what="an Event")


@pytest.mark.slow
async def test_scales_with_backlog_idle_pods_first(api: KubeApi, redis_url: str) -> None:
    async with running_operator(clients=[api]):
        await api.create(TASK_QUEUES.path(NS), taskqueue("burst", redis_url))
        await eventually(
            lambda: get(api, tq_path("burst")),
            lambda b: condition(b, "Ready").get("status") == "True",
            what="Ready=True",
        )
        producer = Client.from_url(redis_url, "burst", NS)
        try:
            ids = producer.submit_many({"type": "t", "payload": i} for i in range(35))
            await eventually(
                lambda: get(api, dep_path("burst")),
                lambda d: d["spec"].get("replicas") == 4,
                what="scale up to ceil(35 / 10)",
            )
            tq = await eventually(
                lambda: get(api, tq_path("burst")),
                lambda b: b["status"].get("desiredReplicas") == 4,
                what="status.desiredReplicas",
            )
            assert (tq["status"]["waiting"], tq["status"]["backlog"]) == (35, 35)
            assert tq["status"]["waitingByPriority"]["default"] == 35
            assert tq["status"]["backlogByPriority"]["default"] == 35
            assert "backlog 35" in tq["status"]["lastScaleReason"]
            assert condition(tq, "Scaling")["reason"] == "ScaledUp"
            await eventually(lambda: events(api, "burst"), has_event("ScaledUp"), what="Event")

            # Four pods (kmock runs no ReplicaSet) and their workers: pod-0 busy, others idle.
            pod_labels = labels("burst")
            pods = [f"burst-worker-{i}" for i in range(4)]
            for pod in pods:
                body = {"metadata": {"name": pod, "namespace": NS, "labels": pod_labels}}
                await api.create(PODS.path(NS), {"apiVersion": "v1", "kind": "Pod", **body})
            # pod-0 runs four tasks: all of its slots (concurrency 4), so one worker stays.
            claim = producer.claim("w0", 4)
            assert len(claim.tasks) == 4
            for i, pod in enumerate(pods):
                info = WorkerInfo(id=f"w{i}", pod=pod, in_flight=4 if i == 0 else 0)
                producer.heartbeat(f"w{i}", [], info)
            # The queue drains: only pod-0's four tasks remain, in flight.
            for task_id in ids:
                if task_id not in {t.id for t in claim.tasks}:
                    producer.cancel(task_id)

            await eventually(
                lambda: get(api, dep_path("burst")),
                lambda d: d["spec"].get("replicas") == 1,
                timeout=15,
                what="scale down after the 1 s stabilization window",
            )
            costs = {
                pod: (await get(api, PODS.path(NS, pod)))["metadata"]
                .get("annotations", {})
                .get(DELETION_COST_ANNOTATION)
                for pod in pods
            }
            assert costs == {pods[0]: "4", pods[1]: "0", pods[2]: "0", pods[3]: "0"}
            await eventually(lambda: events(api, "burst"), has_event("ScaledDown"), what="Event")
            tq = await get(api, tq_path("burst"))
            assert tq["status"]["inFlight"] == 4
            assert tq["status"]["waiting"] == 0
            assert tq["status"]["backlog"] == 4  # waiting + in flight
        finally:
            producer.close()


async def test_invalid_spec_does_not_stop_other_queues(api: KubeApi, redis_url: str) -> None:
    async with running_operator(clients=[api]):
        bad = taskqueue("broken", redis_url, autoscaling={"minReplicas": 12, "maxReplicas": 10})
        await api.create(TASK_QUEUES.path(NS), bad)
        await api.create(TASK_QUEUES.path(NS), taskqueue("fine", redis_url))
        tq = await eventually(
            lambda: get(api, tq_path("broken")),
            lambda b: condition(b, "Ready").get("reason") == "InvalidSpec",
            what="Ready=False InvalidSpec",
        )
        ready = condition(tq, "Ready")
        assert ready["status"] == "False"
        assert "spec.autoscaling.minReplicas: must be <= maxReplicas (12 > 10)" in ready["message"]
        warnings = await eventually(
            lambda: events(api, "broken"), has_event("InvalidSpec", "Warning"), what="Event"
        )
        assert any("minReplicas" in e["message"] for e in warnings)
        await eventually(
            lambda: get(api, tq_path("fine")),
            lambda b: condition(b, "Ready").get("status") == "True",
            what="the valid queue reconciled",
        )
        assert await api.get(dep_path("broken")) is None

        # Fixing the spec reconciles it.
        await api.patch(tq_path("broken"), {"spec": {"autoscaling": {"minReplicas": 2}}})
        await eventually(
            lambda: get(api, tq_path("broken")),
            lambda b: condition(b, "Ready").get("status") == "True",
            what="Ready=True after the fix",
        )
        assert (await get(api, dep_path("broken")))["spec"]["replicas"] == 2


async def test_redis_down_holds_replicas(api: KubeApi) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}"
    async with running_operator(clients=[api]):
        await api.create(
            TASK_QUEUES.path(NS), taskqueue("offline", nowhere, autoscaling={"minReplicas": 2})
        )
        tq = await eventually(
            lambda: get(api, tq_path("offline")),
            lambda b: (
                b.get("status", {}).get("desiredReplicas") is not None
                and condition(b, "RedisReachable").get("status") == "False"
            ),
            what="RedisReachable=False after a tick",
        )
        assert condition(tq, "RedisReachable")["reason"] == "ConnectionFailed"
        assert "unreachable" in condition(tq, "RedisReachable")["message"]
        assert condition(tq, "Ready")["status"] == "True"  # the objects are in place
        scaling = condition(tq, "Scaling")
        assert (scaling["status"], scaling["reason"]) == ("False", "RedisUnreachable")
        assert "holding 2 replicas" in scaling["message"]
        assert tq["status"]["desiredReplicas"] == 2
        assert (await get(api, dep_path("offline")))["spec"]["replicas"] == 2
        await eventually(
            lambda: events(api, "offline"), has_event("RedisUnreachable", "Warning"), what="Event"
        )


async def test_delete_purges_redis_only_when_not_retained(api: KubeApi, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)

    def keys(name: str) -> list[bytes]:
        return list(r.scan_iter(match=QueueKeys(NS, name).prefix + "*"))

    try:
        async with running_operator(clients=[api]):
            await api.create(
                TASK_QUEUES.path(NS), taskqueue("scratch", redis_url, retainRedisData=False)
            )
            await api.create(TASK_QUEUES.path(NS), taskqueue("keep", redis_url))
            for name in ("scratch", "keep"):
                tq = await eventually(
                    lambda name=name: get(api, tq_path(name)),  # type: ignore[misc]
                    lambda b: condition(b, "Ready").get("status") == "True",
                    what=f"{name} Ready",
                )
                assert tq["metadata"]["finalizers"] == ["kubeq.io/finalizer"]
                with Client.from_url(redis_url, name, NS) as producer:
                    producer.submit("t", {"n": 1})
                assert keys(name)
            await api.request("DELETE", tq_path("scratch"))
            await api.request("DELETE", tq_path("keep"))
            for name in ("scratch", "keep"):
                await eventually(
                    lambda name=name: api.get(tq_path(name)),  # type: ignore[misc]
                    lambda b: b is None,
                    what=f"{name} deleted (finalizer released)",
                )
        assert keys("scratch") == []
        assert keys("keep")
    finally:
        r.close()


async def test_schedules_fire_once_per_tick_and_show_in_status(
    api: KubeApi, redis_url: str
) -> None:
    schedules = [
        {"name": "every-second", "intervalSeconds": 1, "task": "rollup", "payload": {"k": 1}},
        {"name": "paused", "cron": "0 3 * * *", "task": "rollup", "suspend": True},
    ]
    async with running_operator(clients=[api]):
        await api.create(TASK_QUEUES.path(NS), taskqueue("sched", redis_url, schedules=schedules))
        tq = await eventually(
            lambda: get(api, tq_path("sched")),
            lambda b: any(
                s.get("lastTaskId") for s in (b.get("status") or {}).get("schedules") or []
            ),
            what="status.schedules with a fired tick",
        )
        by_name = {s["name"]: s for s in tq["status"]["schedules"]}
        fired = by_name["every-second"]
        assert fired["nextRun"] > fired["lastRun"]
        assert by_name["paused"] == {"name": "paused", "suspended": True}
        with Client.from_url(redis_url, "sched", NS) as q:
            task = q.status(fired["lastTaskId"])
            assert (task.type, task.payload) == ("rollup", {"k": 1})
            assert task.idempotency_key is not None
            assert task.idempotency_key.startswith("schedule:every-second:")
            # One task per tick: ticks are whole seconds, each key names its own.
            await asyncio.sleep(2.5)
            keys = [t.idempotency_key for t in [q.status(i) for i in _pending_ids(q)]]
            assert len(keys) == len(set(keys)) >= 2


def _pending_ids(q: Client) -> list[str]:
    return [i for lv in q.config.level_names for i in q.redis.lrange(q.keys.ready(lv), 0, -1)]
