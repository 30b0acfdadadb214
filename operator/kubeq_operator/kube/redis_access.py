"""How the operator reaches a TaskQueue's Redis: the URL from the spec or its Secrets, and one
cached AsyncClient per queue.

The workers get the same inputs as environment variables (manifests.py); this module turns
them into one URL for the operator's own connection: spec.redis.url or the secretRef's key,
then `username` and the password from passwordSecretRef in the userinfo, and TLS as a
rediss:// scheme with `ssl_cert_reqs=none` (insecureSkipVerify) or `ssl_ca_certs=<file>`,
and a client certificate (mutual TLS) as `ssl_certfile`/`ssl_keyfile`. Only Secrets labelled
`kubeq.io/redis-credentials=true` in the TaskQueue's own namespace are read.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from kubeq.protocol import AsyncClient, KubeqError, QueueConfig
from kubeq.protocol.connection import describe, translated, with_credentials
from kubeq_operator.core.spec import RedisSpec
from kubeq_operator.engine.backend import QueueRef
from kubeq_operator.kube.backend import SECRETS, KubeApi

SECRET_TTL_SECONDS = 60.0  # re-read Secrets this often, so a rotated password is picked up
#: The label a Secret must carry for the operator to read it (least privilege, docs/security.md)
CREDENTIALS_LABEL = "kubeq.io/redis-credentials"


class RedisAccessError(KubeqError):
    """The Redis URL cannot be built (a Secret or key is missing, or not opted in).

    Messages name Secrets and keys, never a value read from them.
    """


SecretReader = Callable[[str, str, str], Awaitable[str]]


def secret_reader(api: KubeApi) -> SecretReader:
    """Reads one key of a Secret that opted in with the `kubeq.io/redis-credentials` label.

    RBAC cannot restrict `get` by label, so the label is the operator's own check on top
    of what its Role allows: a TaskQueue author cannot point it at an unrelated Secret of
    the namespace (a Service Account token, a TLS key) and have a value echoed or used.
    """

    async def read(namespace: str, name: str, key: str) -> str:
        secret = await api.get(SECRETS.path(namespace, name))
        where = f"Secret {namespace}/{name}"
        if secret is None:
            raise RedisAccessError(f"{where} not found")
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if labels.get(CREDENTIALS_LABEL) != "true":
            raise RedisAccessError(
                f"{where} is not labelled {CREDENTIALS_LABEL}=true: the operator reads only "
                "Secrets that opt in (kubectl label secret "
                f"{name} -n {namespace} {CREDENTIALS_LABEL}=true)"
            )
        data = secret.get("data") or {}
        if key in data:
            try:
                return base64.b64decode(data[key], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise RedisAccessError(f"{where} key {key!r} is not base64 of UTF-8 text") from None
        string_data = secret.get("stringData") or {}  # never stored by an API server; tests
        if key in string_data:
            return str(string_data[key])
        raise RedisAccessError(f"{where} has no key {key!r}")

    return read


def _private_file(namespace: str, name: str, suffix: str, pem: str) -> str:
    """A PEM from a Secret in a file (redis-py wants paths): named by content, owner-only."""
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "kubeq-operator"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{namespace}-{name}-{digest}.{suffix}"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pem)
    return str(path)


async def resolve_url(read: SecretReader, namespace: str, redis: RedisSpec) -> str:
    """The URL the operator connects with, for a queue in `namespace`."""
    if redis.secret_ref is not None:
        url = await read(namespace, redis.secret_ref.name, redis.secret_ref.key)
    else:
        assert redis.url is not None  # the spec model requires exactly one
        url = redis.url
    password = None
    if redis.password_secret_ref is not None:
        ref = redis.password_secret_ref
        password = await read(namespace, ref.name, ref.key)
    ca_file = cert_file = key_file = None
    if redis.tls.ca_secret_ref is not None:
        ca = redis.tls.ca_secret_ref
        ca_file = _private_file(namespace, ca.name, "crt", await read(namespace, ca.name, ca.key))
    if redis.tls.client_cert_secret_ref is not None:
        cc = redis.tls.client_cert_secret_ref
        cert_file = _private_file(
            namespace, cc.name, "crt", await read(namespace, cc.name, cc.cert_key)
        )
        key_file = _private_file(
            namespace, cc.name, "key", await read(namespace, cc.name, cc.key_key)
        )
    return with_credentials(
        url,
        username=redis.username,
        password=password,
        tls=redis.tls.enabled,
        tls_insecure=redis.tls.insecure_skip_verify,
        tls_ca_file=ca_file,
        tls_cert_file=cert_file,
        tls_key_file=key_file,
    )


def inline_password(redis: RedisSpec) -> bool:
    """Whether spec.redis.url carries a password (readable by anyone who can read the spec)."""
    return redis.url is not None and describe(redis.url).has_credentials


def uses_secrets(redis: RedisSpec) -> bool:
    tls = redis.tls
    return any(
        (redis.secret_ref, redis.password_secret_ref, tls.ca_secret_ref, tls.client_cert_secret_ref)
    )


@dataclass
class _Entry:
    url: str
    config: QueueConfig
    client: AsyncClient
    resolved_at: float


class RedisClients:
    """One AsyncClient per queue, rebuilt when its URL (Secrets) or QueueConfig changes."""

    def __init__(
        self,
        read: SecretReader,
        *,
        secret_ttl: float = SECRET_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read = read
        self.secret_ttl = secret_ttl
        self.clock = clock
        self._entries: dict[QueueRef, _Entry] = {}

    async def client(self, ref: QueueRef, redis: RedisSpec, config: QueueConfig) -> AsyncClient:
        """The queue's client; may raise RedisAccessError (no I/O to Redis happens here)."""
        entry = self._entries.get(ref)
        fresh = entry is not None and (
            not uses_secrets(redis) or self.clock() - entry.resolved_at < self.secret_ttl
        )
        url = entry.url if entry is not None and fresh else None
        if url is None:
            url = await resolve_url(self.read, ref.namespace, redis)
        if entry is not None and entry.url == url and entry.config == config:
            if not fresh:
                entry.resolved_at = self.clock()
            return entry.client
        client = await AsyncClient.from_url(url, ref.name, ref.namespace, config)
        if entry is not None:
            with contextlib.suppress(Exception):  # the old connection may be broken already
                await entry.client.close()
        self._entries[ref] = _Entry(url, config, client, self.clock())
        return client

    async def close(self, ref: QueueRef) -> None:
        entry = self._entries.pop(ref, None)
        if entry is not None:
            with contextlib.suppress(Exception):
                await entry.client.close()

    async def close_all(self) -> None:
        for ref in list(self._entries):
            await self.close(ref)


async def purge(client: AsyncClient, *, batch: int = 500) -> int:
    """Delete every key of the client's queue (its `kubeq:v1:{ns/name}:` prefix); the count."""
    pattern = _glob_escape(client.keys.prefix) + "*"
    removed = 0
    keys: list[str] = []
    with translated(f"Redis of {client.config.namespace}/{client.config.name}"):
        async for key in client.redis.scan_iter(match=pattern, count=1000):
            keys.append(key)
            if len(keys) >= batch:
                removed += int(await client.redis.unlink(*keys))
                keys.clear()
        if keys:
            removed += int(await client.redis.unlink(*keys))
    return removed


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
