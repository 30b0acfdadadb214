"""The operator's Redis URL from the spec and its Secrets, and the per-queue client cache."""

from __future__ import annotations

import pytest

from kubeq.protocol import QueueConfig
from kubeq.protocol.connection import with_credentials
from kubeq_operator.core.spec import RedisSpec
from kubeq_operator.engine.backend import QueueRef
from kubeq_operator.kube.redis_access import (
    RedisAccessError,
    RedisClients,
    resolve_url,
)


def test_with_credentials() -> None:
    assert with_credentials("redis://h:6379/0") == "redis://h:6379/0"
    url = with_credentials("redis://h:6379/0", username="app", password="p@ss:w/rd", tls=True)
    assert url == "rediss://app:p%40ss%3Aw%2Frd@h:6379/0"
    assert with_credentials("redis://old:pw@h", password="new") == "redis://old:new@h"
    assert with_credentials("redis://h", username="u") == "redis://u@h"
    url = with_credentials("redis+sentinel://s1,s2/mymaster", tls=True, tls_insecure=True)
    assert url == "rediss+sentinel://s1,s2/mymaster?ssl_cert_reqs=none"
    assert with_credentials("rediss://h/?db=1", tls_ca_file="/ca.crt") == (
        "rediss://h/?db=1&ssl_ca_certs=%2Fca.crt"
    )


class Secrets:
    def __init__(self, data: dict[tuple[str, str, str], str]) -> None:
        self.data = data
        self.reads = 0

    async def __call__(self, namespace: str, name: str, key: str) -> str:
        self.reads += 1
        try:
            return self.data[namespace, name, key]
        except KeyError:
            raise RedisAccessError(f"Secret {namespace}/{name} has no key {key!r}") from None


async def test_resolve_url_from_secrets() -> None:
    secrets = Secrets(
        {("ns", "redis", "url"): "redis://r:6379/2", ("ns", "redis-pw", "password"): "s3cret"}
    )
    spec = RedisSpec.model_validate(
        {
            "secretRef": {"name": "redis"},
            "username": "kubeq",
            "passwordSecretRef": {"name": "redis-pw"},
        }
    )
    assert await resolve_url(secrets, "ns", spec) == "redis://kubeq:s3cret@r:6379/2"
    with pytest.raises(RedisAccessError, match="no key"):
        await resolve_url(secrets, "other", spec)


async def test_clients_are_cached_and_rebuilt_on_change() -> None:
    now = [0.0]
    secrets = Secrets({("ns", "redis", "url"): "redis://r:1/0"})
    clients = RedisClients(secrets, secret_ttl=60, clock=lambda: now[0])
    ref = QueueRef("ns", "q")
    spec = RedisSpec.model_validate({"secretRef": {"name": "redis"}})
    config = QueueConfig(name="q", namespace="ns")
    try:
        first = await clients.client(ref, spec, config)
        assert await clients.client(ref, spec, config) is first
        assert secrets.reads == 1  # within the TTL
        now[0] = 61
        assert await clients.client(ref, spec, config) is first  # re-read, unchanged
        assert secrets.reads == 2
        secrets.data["ns", "redis", "url"] = "redis://r:2/0"  # rotated
        now[0] = 200
        second = await clients.client(ref, spec, config)
        assert second is not first
        third = await clients.client(
            ref, spec, QueueConfig(name="q", namespace="ns", max_attempts=9)
        )
        assert third is not second
    finally:
        await clients.close_all()
