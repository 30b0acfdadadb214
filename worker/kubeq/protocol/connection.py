"""Redis connections from a URL, and the translation of redis-py errors into kubeq's.

Schemes: redis:// and rediss:// (TLS; ?ssl_cert_reqs=none|required, ssl_ca_certs=...,
and ssl_certfile=...&ssl_keyfile=... for a client certificate),
unix://, username/password in the URL for ACL users, redis+sentinel://h1:26379,h2:26379/
<service>[/db] for Sentinel, and redis+cluster://host:port for Redis Cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.exceptions
import redis.sentinel

import redis
from kubeq.protocol import errors
from kubeq.protocol.target import SCHEMES, RedisTarget, describe

__all__ = [
    "DEFAULT_TIMEOUT",
    "SCHEMES",
    "RedisTarget",
    "connect",
    "connect_async",
    "describe",
    "redacted",
    "translate",
    "translated",
    "with_credentials",
]

DEFAULT_TIMEOUT = 5.0


def redacted(url: object) -> str:
    """How to name `url` in a message or log: its safe description (target.describe)."""
    return str(describe(url))


def with_credentials(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: bool = False,
    tls_insecure: bool = False,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
) -> str:
    """The URL with separately supplied credentials and TLS settings folded in (pure).

    Kubernetes hands these over apart from the URL (the password from a Secret), so the
    worker and the operator both build the effective URL here, the same way. A client
    certificate (mutual TLS) is `tls_cert_file` with its `tls_key_file`. A URL that does
    not parse is returned as it is: connecting to it raises InvalidURL, which says why.
    """
    if describe(url).problem is not None:
        return url
    parts = urlsplit(url)
    scheme = parts.scheme
    # TLS options imply TLS: on a plain connection redis-py fails on them with a TypeError.
    tls = tls or tls_insecure or any((tls_ca_file, tls_cert_file, tls_key_file))
    if tls and scheme.startswith("redis") and not scheme.startswith("rediss"):
        scheme = "rediss" + scheme[len("redis") :]
    netloc = parts.netloc
    if username is not None or password is not None:
        host = netloc.rsplit("@", 1)[-1]
        user = quote(username, safe="") if username is not None else (parts.username or "")
        secret = quote(password, safe="") if password is not None else parts.password
        netloc = f"{user}:{secret}@{host}" if secret is not None else f"{user}@{host}"
    query = dict(parse_qsl(parts.query))
    if tls_insecure:
        query["ssl_cert_reqs"] = "none"
    if tls_ca_file is not None:
        query["ssl_ca_certs"] = tls_ca_file
    if tls_cert_file is not None:
        query["ssl_certfile"] = tls_cert_file
    if tls_key_file is not None:
        query["ssl_keyfile"] = tls_key_file
    return urlunsplit((scheme, netloc, parts.path, urlencode(query), parts.fragment))


def _check(url: str) -> RedisTarget:
    """The URL's description, or InvalidURL naming only what `describe` lets through."""
    target = describe(url)
    if target.problem is not None:
        raise errors.InvalidURL(f"Redis URL {target} {target.problem}")
    return target


def _query_names(url: str) -> str:
    """The names (never the values) of the URL's query options, for an error message."""
    query = url.partition("?")[2]
    names = sorted({name for name, _ in parse_qsl(query, keep_blank_values=True)})
    return ", ".join(n for n in names if n.isidentifier()) or "none"


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """Hosts, service and options of a Sentinel URL that `_check` accepted."""
    parts = urlsplit(url)
    hosts = []
    for hp in parts.netloc.rsplit("@", 1)[-1].split(","):
        if hp.startswith("["):  # [IPv6]:port
            host, _, port = hp[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = hp.partition(":")
        hosts.append((host, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    kwargs: dict[str, Any] = {"db": int(path[1]) if len(path) > 1 else 0}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if parts.scheme.startswith("rediss"):
        kwargs["ssl"] = True
    return hosts, path[0], kwargs


@dataclass(frozen=True)
class _Flavour:
    """The redis-py classes of one I/O style: blocking or asyncio."""

    plain: Any
    cluster: Any
    sentinel: Any


_BLOCKING = _Flavour(redis.Redis, redis.cluster.RedisCluster, redis.sentinel.Sentinel)
_ASYNCIO = _Flavour(
    redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster, redis.asyncio.sentinel.Sentinel
)


def _client(flavour: _Flavour, url: str, timeout: float, options: dict[str, Any]) -> Any:
    target = _check(url)
    scheme = target.scheme or ""
    common = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        **options,
    }
    try:
        if scheme.endswith("+sentinel"):
            hosts, service, kw = _sentinel_parts(url)
            sentinel = flavour.sentinel(
                hosts, socket_timeout=timeout, sentinel_kwargs={"socket_timeout": timeout}
            )
            return sentinel.master_for(service, **kw, **common)
        if scheme.endswith("+cluster"):
            return flavour.cluster.from_url(url.replace("+cluster", "", 1), **common)
        return flavour.plain.from_url(url, **common)
    except (ValueError, TypeError):
        # redis-py's text may quote an option's value (a password in ?password=): not shown.
        raise errors.InvalidURL(
            f"Redis URL {target} is invalid: redis-py refused its options "
            f"(query options: {_query_names(url)})"
        ) from None


def connect(url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any) -> Any:
    """A blocking redis-py client for `url`; no I/O happens until the first command."""
    return _client(_BLOCKING, url, timeout, options)


def connect_async(url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any) -> Any:
    """The asyncio counterpart of `connect`."""
    return _client(_ASYNCIO, url, timeout, options)


def translate(exc: BaseException, where: str = "Redis") -> errors.KubeqError | None:
    """The kubeq error for a redis-py exception; None only for what is not Redis's.

    Every error reply becomes a KubeqError: a caller never meets a raw redis-py error.
    """
    text = str(exc)
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.exceptions.ResponseError)
        # Inside a script, Redis 7 reports an ACL refusal as ERR, not NOPERM.
        and (text.startswith("NOPERM") or "The user executing the script can't" in text)
    ):
        return errors.PermissionDenied(f"{where} denied this ACL user (NOPERM): {text}")
    if isinstance(exc, redis.exceptions.AuthenticationError) or (
        isinstance(exc, redis.exceptions.ResponseError) and text.startswith(("WRONGPASS", "NOAUTH"))
    ):
        return errors.AuthenticationFailed(f"{where} refused the credentials: {text}")
    # redis-py strips the code of the replies it maps to its own classes.
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return errors.PermissionDenied(f"{where} denied this ACL user: NOPERM {text}")
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return errors.RedisOutOfMemory(
            f"{where} is out of memory (maxmemory reached); nothing was written: OOM {text}"
        )
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return errors.ConnectionFailed(f"{where} is a read-only replica (failover?): {text}")
    if isinstance(exc, redis.exceptions.ResponseError):
        return _reply_error(text, where)
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
        return errors.ConnectionFailed(f"{where} is unreachable: {text or type(exc).__name__}")
    if isinstance(exc, redis.exceptions.RedisError):
        return errors.ProtocolError(f"{where} failed: {type(exc).__name__}: {text}")
    return None


def _reply_error(text: str, where: str) -> errors.KubeqError:
    """An error reply from Redis or from one of kubeq's scripts, by its leading code."""
    # Redis prefixes a script's own error replies with nothing, its runtime errors with
    # "ERR user_script..." or "ERR Error running script"; codes may follow either.
    code, _, rest = text.partition(" ")
    if code == "NOPERM" or "NOPERM" in text.split(":")[0]:
        return errors.PermissionDenied(f"{where} denied this ACL user: {text}")
    if code == "OOM" or text.startswith("-OOM") or " OOM " in f" {text} ":
        return errors.RedisOutOfMemory(
            f"{where} is out of memory (maxmemory reached); nothing was written: {text}"
        )
    if code == "QUEUEFULL":
        backlog, limit, fresh = rest.split()
        return errors.QueueFull(
            f"queue is full: backlog {backlog} + {fresh} new tasks would exceed maxBacklog {limit}"
        )
    if code == "TASKEXISTS":
        return errors.TaskExists(
            f"task id {rest} is already in use (pending, running, dead or finished): "
            "choose a new id, or use an idempotency key to make a resubmit return it"
        )
    if code == "WORKFLOWEXISTS":
        return errors.TaskExists(f"workflow id {rest} is already in use: choose a new id")
    if code in ("BADBATCH", "BADSETTLE", "BADSUBMIT", "PROTOCOL"):
        return errors.ScriptError(f"{where} refused a protocol call: {text}")
    return errors.ScriptError(f"{where} answered an error: {text}")


@contextlib.contextmanager
def translated(where: str = "Redis") -> Iterator[None]:
    try:
        yield
    except redis.exceptions.RedisError as exc:
        mapped = translate(exc, where)
        if mapped is None:
            raise
        raise mapped from exc
