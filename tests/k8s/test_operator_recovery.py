"""Issue 11, items 1-4: the operator recovers from every refused change, survives every API
and Redis error of one queue, says why in Events, and does not roll out what cannot start.

Real kopf against the emulator (which refuses invalid Deployments as an API server does)
and a real redis-server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import kmock as km
import pytest
from tests.k8s.emulator import KubeqEmulator, eventually, operator_settings, running_operator
from tests.k8s.test_operator import (
    NS,
    condition,
    dep_path,
    events,
    get,
    has_event,
    taskqueue,
    tq_path,
)

import redis
from kubeq.protocol import Client, QueueKeys
from kubeq.redis_server import RedisServer, free_port
from kubeq_operator.core.manifests import SPEC_ANNOTATION
from kubeq_operator.kube.backend import SECRETS, TASK_QUEUES, KubeApi
from kubeq_operator.kube.handlers import Operator

pytestmark = pytest.mark.kmock(cls=KubeqEmulator)


def env_of(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"][0].get("env") or [])


def errors_counted(op: Operator, queue: str) -> float:
    value = op.metrics.registry.get_sample_value(
        "kubeq_reconcile_errors_total", {"queue": f"{NS}/{queue}"}
    )
    return float(value or 0.0)


async def ready(api: KubeApi, name: str) -> dict[str, Any]:
    return await eventually(
        lambda: get(api, tq_path(name)),
        lambda b: condition(b, "Ready").get("status") == "True",
        what=f"{name} Ready=True",
    )


async def test_refused_update_recovers_when_fixed(api: KubeApi, redis_url: str) -> None:
    """Item 1: the API server refuses an update (422); the user removes the bad value; the
    operator reconciles the current spec (not the refused one) within one poll interval,
    and a Deployment event never re-applies the removed value."""
    poll = 2.0
    tq = taskqueue("fixme", redis_url, autoscaling={"pollIntervalSeconds": poll})
    async with running_operator(clients=[api]) as memo:
        await api.create(TASK_QUEUES.path(NS), tq)
        await ready(api, "fixme")
        good_env = env_of(await get(api, dep_path("fixme")))

        published = redis.Redis.from_url(redis_url)
        config_key = QueueKeys(NS, "fixme").config

        def lease_published() -> float:
            return float(json.loads(published.get(config_key) or b"{}")["lease_seconds"])

        good_lease = lease_published()
        bad = [{"name": "LOG_LEVEL=debug", "value": "1"}]
        # The refused update also changes the queue's config (a longer lease).
        change = {"worker": {"env": bad}, "lease": {"durationSeconds": 77}}
        await api.patch(tq_path("fixme"), {"spec": change})
        body = await eventually(
            lambda: get(api, tq_path("fixme")),
            lambda b: condition(b, "Ready").get("reason") == "ApplyFailed",
            what="Ready=False ApplyFailed",
        )
        assert condition(body, "Ready")["status"] == "False"
        assert "422" in condition(body, "Ready")["message"]
        assert "LOG_LEVEL=debug" in condition(body, "Ready")["message"]
        assert env_of(await get(api, dep_path("fixme"))) == good_env  # the last good one
        # Producers and tools read the published config: it stays the one the running
        # workers were given (their template), not the refused spec's.
        assert lease_published() == good_lease != 77

        # The fix: the bad value removed.
        fixed_at = time.monotonic()
        await api.patch(tq_path("fixme"), {"spec": {"worker": {"env": None}}})
        body = await eventually(
            lambda: get(api, tq_path("fixme")),
            lambda b: condition(b, "Ready").get("status") == "True",
            timeout=poll + 1.0,
            what="Ready=True within one poll interval of the fix",
        )
        assert time.monotonic() - fixed_at <= poll + 1.0
        assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
        assert lease_published() == 77  # applied now: published with it
        good_env = env_of(await get(api, dep_path("fixme")))  # the fixed spec's template
        # Item 3: the refusal and the recovery are Events.
        warnings = await eventually(
            lambda: events(api, "fixme"), has_event("ApplyFailed", "Warning"), what="Warning"
        )
        assert any("422" in e["message"] for e in warnings if e["reason"] == "ApplyFailed")
        await eventually(
            lambda: events(api, "fixme"), has_event("Reconciled", "Normal"), what="recovery Event"
        )

        # A Deployment event (a hand edit) restores the current spec, not the refused one.
        op: Operator = memo["operator"]
        errors_before = errors_counted(op, "fixme")
        await api.patch(dep_path("fixme"), {"metadata": {"labels": {"touched": "yes"}}})
        hand = {"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "x"}]}}}}
        await api.patch(dep_path("fixme"), hand)
        dep = await eventually(
            lambda: get(api, dep_path("fixme")),
            lambda d: d["spec"]["template"]["spec"]["containers"][0].get("image") != "x",
            what="the hand edit restored",
        )
        assert env_of(dep) == good_env
        assert all("=" not in e["name"] for e in env_of(dep))
        assert errors_counted(op, "fixme") == errors_before
        body = await get(api, tq_path("fixme"))
        assert condition(body, "Ready")["status"] == "True"


async def test_recreate_failure_does_not_stop_the_autoscaler(
    api: KubeApi, kmock: KubeqEmulator, redis_url: str
) -> None:
    """Item 2: re-creating a deleted Deployment fails (the API server answers 500 for a
    while): the error is reported on the queue (condition, Warning Event, metric), retried
    with backoff, the other queue keeps scaling, and the Deployment comes back once the
    API server accepts it again (not after kopf's 60 s daemon restart)."""
    refusing = True

    def refuse_create(request: km.Request) -> km.KubernetesError | None:
        data = request.data if isinstance(request.data, dict) else {}
        if (
            refusing
            and request.action == km.action.CREATE
            and (data.get("metadata") or {}).get("name") == "lost-worker"
        ):
            return km.KubernetesError(status=500, reason="InternalError", message="etcd down")
        return None

    async with running_operator(clients=[api]) as memo:
        op: Operator = memo["operator"]
        await api.create(TASK_QUEUES.path(NS), taskqueue("lost", redis_url))
        await api.create(TASK_QUEUES.path(NS), taskqueue("other", redis_url))
        await ready(api, "lost")
        await ready(api, "other")

        kmock.faults.append(refuse_create)
        await api.request("DELETE", dep_path("lost"))
        body = await eventually(
            lambda: get(api, tq_path("lost")),
            lambda b: "etcd down" in (condition(b, "Ready").get("message") or ""),
            what="Ready=False after the failed re-creation",
        )
        assert condition(body, "Ready")["status"] == "False"
        await eventually(
            lambda: events(api, "lost"), has_event("ApplyFailed", "Warning"), what="Warning"
        )
        assert errors_counted(op, "lost") >= 1

        # Meanwhile the other queue scales.
        with Client.from_url(redis_url, "other", NS) as producer:
            producer.submit_many({"type": "t", "payload": i} for i in range(35))
        await eventually(
            lambda: get(api, dep_path("other")),
            lambda d: d["spec"].get("replicas") == 4,
            what="the other queue scaled up",
        )

        refusing = False
        await eventually(lambda: api.get(dep_path("lost")), bool, what="re-created", timeout=8)
        await ready(api, "lost")
        await eventually(
            lambda: events(api, "lost"), has_event("Reconciled", "Normal"), what="recovery Event"
        )


async def test_redis_error_of_one_queue_is_reported_and_retried(
    api: KubeApi, redis_url: str
) -> None:
    """Item 2: a Redis script error for one queue (a key of the wrong type) is reported
    (Scaling=False, Warning Event, metric) while the other queue keeps scaling."""
    r = redis.Redis.from_url(redis_url)
    try:
        async with running_operator(clients=[api]) as memo:
            op: Operator = memo["operator"]
            await api.create(TASK_QUEUES.path(NS), taskqueue("wrongtype", redis_url))
            await api.create(TASK_QUEUES.path(NS), taskqueue("healthy", redis_url))
            await ready(api, "wrongtype")
            await ready(api, "healthy")
            ready_key = QueueKeys(NS, "wrongtype").ready("default")
            r.delete(ready_key)
            r.hset(ready_key, "not", "a list")
            body = await eventually(
                lambda: get(api, tq_path("wrongtype")),
                lambda b: condition(b, "Scaling").get("status") == "False",
                what="Scaling=False on the Redis error",
            )
            assert condition(body, "Scaling")["reason"] == "AutoscalerError"
            assert "WRONGTYPE" in condition(body, "Scaling")["message"]
            await eventually(
                lambda: events(api, "wrongtype"),
                has_event("AutoscalerError", "Warning"),
                what="Warning",
            )
            assert errors_counted(op, "wrongtype") >= 1

            with Client.from_url(redis_url, "healthy", NS) as producer:
                producer.submit_many({"type": "t", "payload": i} for i in range(35))
            await eventually(
                lambda: get(api, dep_path("healthy")),
                lambda d: d["spec"].get("replicas") == 4,
                what="the healthy queue scaled up",
            )

            r.delete(ready_key)  # repaired: the next retry succeeds
            await eventually(
                lambda: get(api, tq_path("wrongtype")),
                lambda b: condition(b, "Scaling").get("status") == "True",
                what="Scaling=True again",
            )
            await eventually(
                lambda: events(api, "wrongtype"),
                has_event("ScalingResumed", "Normal"),
                what="recovery Event",
            )
    finally:
        r.close()


def secret(name: str, **data: str) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": encoded,
    }


async def test_missing_secret_key_is_not_rolled_out(api: KubeApi, redis_url: str) -> None:
    """Item 4: a secretRef whose key does not exist: Ready=False naming the Secret and key,
    no Deployment whose pods could not start; fixed by adding the key (no spec change)."""
    await api.create(SECRETS.path(NS), secret("queue-redis", other=redis_url))
    tq = taskqueue("secretive", redis_url)
    tq["spec"]["redis"] = {"secretRef": {"name": "queue-redis", "key": "url"}}
    async with running_operator(clients=[api]):
        await api.create(TASK_QUEUES.path(NS), tq)
        body = await eventually(
            lambda: get(api, tq_path("secretive")),
            lambda b: condition(b, "Ready").get("reason") == "MissingReference",
            what="Ready=False MissingReference",
        )
        message = condition(body, "Ready")["message"]
        assert condition(body, "Ready")["status"] == "False"
        assert 'Secret "queue-redis" has no key "url"' in message
        await eventually(
            lambda: events(api, "secretive"),
            has_event("MissingReference", "Warning"),
            what="Warning",
        )
        assert await api.get(dep_path("secretive")) is None

        await api.patch(
            SECRETS.path(NS, "queue-redis"),
            {"data": {"url": base64.b64encode(redis_url.encode()).decode()}},
        )
        await ready(api, "secretive")
        assert await api.get(dep_path("secretive")) is not None


# Each refused spec also asks for maxReplicas 2, which must not apply: the pool is scaled
# by the spec its Deployment was built from (maxReplicas 5).
REFUSED = {
    "ApplyFailed": {"worker": {"env": [{"name": "LOG_LEVEL=debug", "value": "1"}]}},
    "MissingReference": {
        "worker": {
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]
        }
    },
    "InvalidSpec": {"autoscaling": {"minReplicas": 3}},
}


@pytest.mark.parametrize("reason", list(REFUSED))
async def test_restart_with_refused_spec_keeps_scaling_the_last_good_deployment(
    api: KubeApi, redis_url: str, reason: str
) -> None:
    """The operator restarts while the current spec is refused (by the API server, for a
    missing Secret, or as invalid) and the backlog grows: it scales the running Deployment
    by the spec that Deployment was built from (recorded on the Deployment itself), exactly
    as it did before the restart, while the status still says why the spec is refused."""
    tq = taskqueue("stuck", redis_url)  # maxReplicas 5, 10 tasks per replica
    async with running_operator(clients=[api]):
        await api.create(TASK_QUEUES.path(NS), tq)
        await ready(api, "stuck")
        good_env = env_of(await get(api, dep_path("stuck")))
        refused = REFUSED[reason]
        autoscaling = {"maxReplicas": 2, **refused.get("autoscaling", {})}
        await api.patch(tq_path("stuck"), {"spec": {**refused, "autoscaling": autoscaling}})
        await eventually(
            lambda: get(api, tq_path("stuck")),
            lambda b: condition(b, "Ready").get("reason") == reason,
            what=f"Ready=False {reason}",
        )
    assert (await get(api, dep_path("stuck")))["spec"]["replicas"] == 1

    producer = Client.from_url(redis_url, "stuck", NS)
    try:
        producer.submit_many({"type": "t", "payload": i} for i in range(35))
    finally:
        producer.close()

    async with running_operator(clients=[api]):
        dep = await eventually(
            lambda: get(api, dep_path("stuck")),
            lambda d: d["spec"].get("replicas") == 4,
            what="the last good Deployment scaled to ceil(35 / 10) after the restart",
        )
        assert env_of(dep) == good_env  # still the last good template
        body = await eventually(
            lambda: get(api, tq_path("stuck")),
            lambda b: b.get("status", {}).get("desiredReplicas") == 4,
            what="status.desiredReplicas",
        )
        assert condition(body, "Ready")["status"] == "False"
        assert condition(body, "Ready")["reason"] == reason
        assert condition(body, "Scaling")["reason"] == "ScaledUp"
        await eventually(lambda: events(api, "stuck"), has_event("Adopted"), what="Event")
        # And repaired by it: a hand edit is put back to the last good template.
        hand = {"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "x"}]}}}}
        await api.patch(dep_path("stuck"), hand)
        dep = await eventually(
            lambda: get(api, dep_path("stuck")),
            lambda d: d["spec"]["template"]["spec"]["containers"][0].get("image") != "x",
            what="the hand edit restored",
        )
        assert env_of(dep) == good_env
        assert dep["spec"]["replicas"] == 4


async def test_restart_does_not_adopt_an_unusable_record(api: KubeApi, redis_url: str) -> None:
    """A record that does not pass the checks any spec passes is not scaled by: one
    hand-edited into an invalid spec, one whose pods the restarted operator's pod policy no
    longer allows (a service account taken off the list). The operator keeps running,
    reports the refused spec, and serves the queue whose record is good."""
    bad = {"worker": {"env": [{"name": "LOG_LEVEL=debug", "value": "1"}]}}
    account = {"podTemplate": {"serviceAccountName": "workers"}}
    queues = {
        "forged": taskqueue("forged", redis_url),
        "revoked": taskqueue("revoked", redis_url),
        "good": taskqueue("good", redis_url),
    }
    queues["revoked"]["spec"]["worker"] |= account
    async with running_operator(
        operator_settings(allowed_service_accounts="workers"), clients=[api]
    ):
        for name, tq in queues.items():
            await api.create(TASK_QUEUES.path(NS), tq)
            await ready(api, name)
            await api.patch(tq_path(name), {"spec": bad})
            await eventually(
                lambda name=name: get(api, tq_path(name)),  # type: ignore[misc]
                lambda b: condition(b, "Ready").get("reason") == "ApplyFailed",
                what=f"{name}: Ready=False ApplyFailed",
            )
    forged = {"worker": {"image": "evil:1"}}  # no redis, no app: not a TaskQueue spec
    await api.patch(
        dep_path("forged"),
        {"metadata": {"annotations": {SPEC_ANNOTATION: json.dumps(forged)}}},
    )
    templates = {n: (await get(api, dep_path(n)))["spec"]["template"] for n in queues}

    for name in queues:
        producer = Client.from_url(redis_url, name, NS)
        try:
            producer.submit_many({"type": "t", "payload": i} for i in range(35))
        finally:
            producer.close()

    async with running_operator(operator_settings(allowed_service_accounts=""), clients=[api]):
        await eventually(
            lambda: get(api, dep_path("good")),
            lambda d: d["spec"].get("replicas") == 4,
            what="the queue with a good record scaled",
        )
        # Their rounds run at the same pace as the good queue's: give them two more.
        await asyncio.sleep(1.0)
        for name in ("forged", "revoked"):
            dep = await get(api, dep_path(name))
            assert dep["spec"]["replicas"] == 1, name
            assert dep["spec"]["template"] == templates[name], name  # nothing built from it
            body = await get(api, tq_path(name))
            assert condition(body, "Ready")["status"] == "False", name
            # No autoscaler round ran for it: the backlog shown is the one before the restart.
            assert body["status"]["backlog"] == 0, name
            assert condition(body, "Scaling")["reason"] != "AutoscalerError", name


async def test_a_config_not_published_while_redis_was_down_is_published_once_it_is_back(
    api: KubeApi,
) -> None:
    """The spec is applied while its Redis is down (the Deployment carries the config
    inline); producers read the published config, so it reaches Redis as soon as Redis is
    back, not only at the next spec change."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    tq = taskqueue("later", url, lease={"durationSeconds": 44})
    async with running_operator(clients=[api]):
        await api.create(TASK_QUEUES.path(NS), tq)
        await ready(api, "later")  # applied: Ready=True although Redis is unreachable
        body = await get(api, tq_path("later"))
        assert condition(body, "RedisReachable").get("status") == "False"
        await asyncio.sleep(2.0)  # several polls with Redis down: the spec is settled
        with RedisServer(port=port) as server:
            published = redis.Redis.from_url(server.url)
            raw = await eventually(
                lambda: asyncio.to_thread(published.get, QueueKeys(NS, "later").config),
                lambda v: v is not None,
                timeout=15,
                what="the config published once Redis is reachable",
            )
            assert json.loads(raw)["lease_seconds"] == 44
