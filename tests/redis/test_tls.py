"""Mutual TLS against a real redis-server (`tls-auth-clients yes`): the worker's settings,
the client URL options and the operator's Secrets all reach a working connection, and a
client without a certificate is refused with a typed error."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest
from tests.tls_certs import Certs, make_certs

from kubeq.protocol import AsyncClient, Client, ConnectionFailed, QueueConfig
from kubeq.protocol.connection import with_credentials
from kubeq.redis_server import RedisServer, free_port
from kubeq.worker.settings import WorkerSettings
from kubeq_operator.core.spec import RedisSpec
from kubeq_operator.kube.redis_access import resolve_url

CONFIG = QueueConfig(name="tls")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def mtls(certs: Certs) -> Iterator[int]:
    """A redis-server that speaks TLS only to clients with a certificate of the test CA."""
    tls_port = free_port()
    extra = (
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "yes",
    )  # fmt: skip
    with RedisServer(extra=extra):
        yield tls_port


def test_a_client_certificate_opens_the_connection(certs: Certs, mtls: int) -> None:
    url = with_credentials(
        f"redis://127.0.0.1:{mtls}/0",
        tls=True,
        tls_ca_file=str(certs.ca),
        tls_cert_file=str(certs.client_cert),
        tls_key_file=str(certs.client_key),
    )
    with Client.from_url(url, "tls", config=CONFIG) as client:
        client.submit("t")
        assert client.stats().ready == 1


def test_without_a_client_certificate_the_server_refuses(certs: Certs, mtls: int) -> None:
    url = with_credentials(f"redis://127.0.0.1:{mtls}/0", tls=True, tls_ca_file=str(certs.ca))
    with pytest.raises(ConnectionFailed):
        Client.from_url(url, "tls", timeout=2).ping()


def test_the_worker_settings_carry_the_certificate(
    certs: Certs, mtls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "KUBEQ_REDIS_URL": f"redis://127.0.0.1:{mtls}/0",
        "KUBEQ_REDIS_TLS": "true",
        "KUBEQ_REDIS_TLS_CA_FILE": str(certs.ca),
        "KUBEQ_REDIS_TLS_CERT_FILE": str(certs.client_cert),
        "KUBEQ_REDIS_TLS_KEY_FILE": str(certs.client_key),
    }.items():
        monkeypatch.setenv(name, value)
    url, options = WorkerSettings().redis_connection()
    with Client.from_url(url, "tls", config=CONFIG, **options) as client:
        client.ping()


def test_a_ca_file_alone_implies_tls(certs: Certs, mtls: int) -> None:
    """A CA file on a redis:// URL was a TypeError in every worker; now it means TLS."""
    url = with_credentials(
        f"redis://127.0.0.1:{mtls}/0",
        tls_ca_file=str(certs.ca),
        tls_cert_file=str(certs.client_cert),
        tls_key_file=str(certs.client_key),
    )
    assert url.startswith("rediss://")
    with Client.from_url(url, "tls", config=CONFIG) as client:
        client.ping()


async def test_the_operator_connects_with_certificates_from_secrets(
    certs: Certs, mtls: int
) -> None:
    data = {
        ("ns", "redis", "url"): f"redis://127.0.0.1:{mtls}/0",
        ("ns", "redis-ca", "ca.crt"): certs.ca.read_text(),
        ("ns", "redis-client", "tls.crt"): certs.client_cert.read_text(),
        ("ns", "redis-client", "tls.key"): certs.client_key.read_text(),
    }

    async def read(namespace: str, name: str, key: str) -> str:
        return data[namespace, name, key]

    spec = RedisSpec.model_validate(
        {
            "secretRef": {"name": "redis"},
            "tls": {
                "enabled": True,
                "caSecretRef": {"name": "redis-ca"},
                "clientCertSecretRef": {"name": "redis-client"},
            },
        }
    )
    url = await resolve_url(read, "ns", spec)
    key_file = next(v for k, v in _query(url).items() if k == "ssl_keyfile")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    async with await AsyncClient.from_url(url, "tls", config=CONFIG) as client:
        await client.ping()


def _query(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))
