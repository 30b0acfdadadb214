"""The operator under real kopf against the emulator: no Secret value reaches a status
condition, an Event, its log or its metrics; it reads only Secrets that opt in; it warns
about an inline password; it refuses worker pods its pod policy forbids."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client import generate_latest
from tests.hostile import NON_URL, PASSWORD, hostile_urls, leaked
from tests.k8s.emulator import (
    KubeqEmulator,
    api_for,
    eventually,
    kubeconfig_for,
    operator_settings,
    running_operator,
)
from tests.k8s.test_operator import condition, dep_path, events, get, taskqueue, tq_path

from kubeq.redis_server import free_port
from kubeq_operator.kube.backend import SECRETS, TASK_QUEUES, KubeApi
from kubeq_operator.kube.redis_access import CREDENTIALS_LABEL

pytestmark = pytest.mark.kmock(cls=KubeqEmulator)
NS = "default"


@pytest.fixture
async def api(kmock: KubeqEmulator, tmp_path: Path) -> AsyncIterator[KubeApi]:
    with kubeconfig_for(str(kmock.url), tmp_path):
        client = api_for(str(kmock.url))
        yield client
        await client.close()


def secret(name: str, data: dict[str, str], *, opted_in: bool = True) -> dict[str, Any]:
    labels = {CREDENTIALS_LABEL: "true"} if opted_in else {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def from_secret(name: str, **redis: Any) -> dict[str, Any]:
    body = taskqueue(name, "redis://unused:6379/0")
    body["spec"]["redis"] = {"secretRef": {"name": f"{name}-redis"}, **redis}
    return body


def redis_reachable_false(body: dict[str, Any]) -> bool:
    return condition(body, "RedisReachable").get("status") == "False"


async def test_no_secret_value_reaches_status_events_logs_or_metrics(
    api: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    nowhere = f"127.0.0.1:{free_port()}"
    cases: dict[str, dict[str, Any]] = {}
    for i, url in enumerate(hostile_urls(nowhere, each_char=False)):
        cases[f"url{i}"] = {"url": url}
    # A password apart from the URL, a wrong password key, and a non-URL value.
    cases["pw"] = {"url": f"redis://{nowhere}/0", "password": PASSWORD}
    cases["plain"] = {"url": NON_URL}
    async with running_operator(clients=[api]) as memo:
        for name, data in cases.items():
            await api.create(SECRETS.path(NS), secret(f"{name}-redis", data))
            redis: dict[str, Any] = {}
            if "password" in data:
                redis["passwordSecretRef"] = {"name": f"{name}-redis"}
            await api.create(TASK_QUEUES.path(NS), from_secret(name, **redis))
        bodies = []
        for name in cases:
            bodies.append(
                await eventually(
                    lambda name=name: get(api, tq_path(name)),  # type: ignore[misc]
                    redis_reachable_false,
                    what=f"{name}: RedisReachable=False",
                    timeout=20,
                )
            )
            evs = await eventually(
                lambda name=name: events(api, name),  # type: ignore[misc]
                # The Warning carries the condition's reason (InvalidURL, ConnectionFailed).
                lambda evs: any(e.get("type") == "Warning" for e in evs),
                what=f"{name}: Warning Event",
            )
            assert leaked(*(e.get("message") for e in evs)) == [], name
        scrape = generate_latest(memo["operator"].metrics.registry).decode()
    for body in bodies:
        assert leaked(body.get("status")) == [], body["metadata"]["name"]
    reasons = {condition(b, "RedisReachable")["reason"] for b in bodies}
    assert reasons <= {"InvalidURL", "ConnectionFailed"}, reasons
    assert "InvalidURL" in reasons
    plain = next(b for b in bodies if b["metadata"]["name"] == "plain")
    assert "has no scheme" in condition(plain, "RedisReachable")["message"]
    assert leaked(scrape) == []
    assert leaked(caplog.text) == []


async def test_only_secrets_that_opt_in_are_read(api: KubeApi, redis_url: str) -> None:
    async with running_operator(clients=[api]):
        await api.create(SECRETS.path(NS), secret("shy-redis", {"url": redis_url}, opted_in=False))
        await api.create(TASK_QUEUES.path(NS), from_secret("shy"))
        tq = await eventually(
            lambda: get(api, tq_path("shy")), redis_reachable_false, what="refused"
        )
        reachable = condition(tq, "RedisReachable")
        assert reachable["reason"] == "SecretUnavailable"
        assert f"not labelled {CREDENTIALS_LABEL}=true" in reachable["message"]
        # Opting in (the label) is enough: the next round reads it.
        await api.patch(
            SECRETS.path(NS, "shy-redis"), {"metadata": {"labels": {CREDENTIALS_LABEL: "true"}}}
        )
        await eventually(
            lambda: get(api, tq_path("shy")),
            lambda b: condition(b, "RedisReachable").get("status") == "True",
            what="RedisReachable=True after the label",
            timeout=20,
        )


async def test_an_inline_password_is_flagged(api: KubeApi, redis_url: str) -> None:
    host = redis_url.split("://", 1)[1]
    inline = f"redis://:{quote(PASSWORD, safe='')}@{host}"
    async with running_operator(clients=[api]):
        await api.create(TASK_QUEUES.path(NS), taskqueue("inline", inline))
        tq = await eventually(
            lambda: get(api, tq_path("inline")),
            lambda b: condition(b, "CredentialsSafe").get("status") == "False",
            what="CredentialsSafe=False",
        )
        flagged = condition(tq, "CredentialsSafe")
        assert flagged["reason"] == "InlinePassword"
        assert "passwordSecretRef" in flagged["message"]
        assert leaked(tq["status"]) == []
        await eventually(
            lambda: events(api, "inline"),
            lambda evs: any(e.get("reason") == "InlinePassword" for e in evs),
            what="Warning Event",
        )
        # Moving the password out of the URL clears the condition.
        await api.patch(tq_path("inline"), {"spec": {"redis": {"url": redis_url}}})
        await eventually(
            lambda: get(api, tq_path("inline")),
            lambda b: (
                condition(b, "CredentialsSafe") == {}
                and condition(b, "Ready").get("status") == "True"
            ),
            what="condition cleared",
        )


async def test_pods_the_policy_forbids_are_refused(api: KubeApi, redis_url: str) -> None:
    settings = operator_settings(
        allowed_service_accounts="workers", pod_security_exempt_namespaces="legacy"
    )
    attacks = {
        "privileged": {"containerSecurityContext": {"privileged": True}},
        "root": {"securityContext": {"runAsUser": 0}, "containerSecurityContext": {}},
        "hostpath": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        "admin-sa": {"serviceAccountName": "cluster-admin-sa"},
    }
    async with running_operator(settings, clients=[api]):
        for name, template in attacks.items():
            body = taskqueue(name, redis_url)
            body["spec"]["worker"]["podTemplate"] = template
            await api.create(TASK_QUEUES.path(NS), body)
        allowed = taskqueue("allowed", redis_url)
        allowed["spec"]["worker"]["podTemplate"] = {"serviceAccountName": "workers"}
        await api.create(TASK_QUEUES.path(NS), allowed)
        for name in attacks:
            tq = await eventually(
                lambda name=name: get(api, tq_path(name)),  # type: ignore[misc]
                lambda b: condition(b, "Ready").get("reason") == "PolicyViolation",
                what=f"{name}: Ready=False PolicyViolation",
            )
            assert condition(tq, "Ready")["status"] == "False"
            await eventually(
                lambda name=name: events(api, name),  # type: ignore[misc]
                lambda evs: any(
                    e.get("reason") == "PolicyViolation" and e.get("type") == "Warning" for e in evs
                ),
                what=f"{name}: Warning Event",
            )
            assert await api.get(dep_path(name)) is None, name
        await eventually(
            lambda: get(api, tq_path("allowed")),
            lambda b: condition(b, "Ready").get("status") == "True",
            what="the allowed account reconciles",
        )


async def test_a_redis_that_may_evict_tasks_is_flagged(api: KubeApi, redis_url: str) -> None:
    """Issue 9 item 6: a maxmemory-policy other than noeviction may silently drop accepted
    tasks; the operator says so on the TaskQueue (condition + Warning Event + metric)."""
    import redis as redis_py

    r = redis_py.Redis.from_url(redis_url)
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        async with running_operator(clients=[api]) as memo:
            await api.create(TASK_QUEUES.path(NS), taskqueue("evicting", redis_url))
            tq = await eventually(
                lambda: get(api, tq_path("evicting")),
                lambda b: condition(b, "EvictionPolicySafe").get("status") == "False",
                what="EvictionPolicySafe=False",
            )
            flagged = condition(tq, "EvictionPolicySafe")
            assert flagged["reason"] == "EvictionPolicy"
            assert "'allkeys-lru'" in flagged["message"]
            assert "noeviction" in flagged["message"]
            evs = await eventually(
                lambda: events(api, "evicting"),
                lambda evs: any(e.get("reason") == "EvictionPolicy" for e in evs),
                what="Warning Event",
            )
            assert {e["type"] for e in evs if e.get("reason") == "EvictionPolicy"} == {"Warning"}
            scrape = generate_latest(memo["operator"].metrics.registry).decode()
            assert 'kubeq_redis_eviction_policy_safe{queue="default/evicting"} 0.0' in scrape
            # Fixed on the Redis side: the next reconcile (a spec change here) clears it.
            r.config_set("maxmemory-policy", "noeviction")
            await api.patch(tq_path("evicting"), {"spec": {"worker": {"concurrency": 3}}})
            await eventually(
                lambda: get(api, tq_path("evicting")),
                lambda b: condition(b, "EvictionPolicySafe") == {},
                what="condition cleared",
            )
            scrape = generate_latest(memo["operator"].metrics.registry).decode()
            assert 'kubeq_redis_eviction_policy_safe{queue="default/evicting"} 1.0' in scrape
    finally:
        r.config_set("maxmemory-policy", "noeviction")
        r.close()
