"""What may be said about a Redis URL: its parsed, password-free description.

Every message, log line, status condition and banner that names a Redis server takes it
from `describe(url)`, never from the URL itself. `describe` never raises and builds its
text only from parts that passed a strict pattern (a known scheme, host names, ports, a
database number, a user name next to a password), so neither a password, nor a Secret
value that is not a URL at all, nor a fragment of an unparseable URL can reach the text:
what does not match is left out, and the description says why the URL cannot be used in
words that quote nothing of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])$"
)
_PORT = re.compile(r"^[0-9]{1,5}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")  # user and Sentinel service names
_DB = re.compile(r"^[0-9]{1,5}$")
_SOCKET = re.compile(r"^/[A-Za-z0-9_./-]{1,255}$")
# A URL's userinfo ends at its last '@'; these before it mean the URL splits elsewhere.
_AMBIGUOUS = "/?#"
_UNESCAPED = (
    "cannot be parsed unambiguously: its user name or password holds an unescaped "
    "'/', '?', '#', '@', '[' or ']' (percent-encode them, e.g. / as %2F), or its path or "
    "query holds an '@' (write %40)"
)


def _urllib_agrees(url: str, scheme: str) -> bool:
    """Whether urllib (which redis-py uses) splits `url` without error (its errors quote)."""
    if scheme.endswith("+sentinel"):
        return True  # a host list: parsed by kubeq itself (connection._sentinel_parts)
    try:
        parts = urlsplit(url)
        _ = parts.port
        _ = parts.hostname
    except ValueError:
        return False
    return not parts.fragment


@dataclass(frozen=True)
class RedisTarget:
    """A Redis URL as it may be shown: `str()` of it is safe for any message or log."""

    scheme: str | None = None
    hosts: tuple[str, ...] = ()  # "host:port" each
    path: str | None = None  # a unix socket path, or "/<service>" for Sentinel
    db: int | None = None
    username: str | None = None
    has_credentials: bool = False
    #: why the URL cannot be used (None: it parses); quotes nothing of the URL
    problem: str | None = None

    def __str__(self) -> str:
        if self.scheme is None:
            return "<value hidden>"
        auth = ""
        if self.has_credentials:
            auth = f"{self.username}:***@" if self.username else "***@"
        where = ",".join(self.hosts)
        tail = self.path or ""
        if self.db is not None:
            tail += f"/{self.db}"
        if not where and not tail and self.problem is not None:
            return f"{self.scheme}://…"
        return f"{self.scheme}://{auth}{where}{tail}"


def _host_port(text: str, default_port: int | None) -> str | None:
    """ "host:port" when `text` is a plain host with an optional numeric port, else None."""
    host, port = text, ""
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[: close + 1], text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if not _HOST.match(host):
        return None
    if port:
        if not _PORT.match(port) or not 0 < int(port) <= 65535:
            return None
        return f"{host}:{int(port)}"
    return host if default_port is None else f"{host}:{default_port}"


def describe(url: object) -> RedisTarget:
    """The safe description of `url`; never raises, whatever `url` is."""
    if not isinstance(url, str):
        return RedisTarget(problem="is not a string")
    if "://" not in url:
        return RedisTarget(problem="has no scheme such as redis:// (is it a URL at all?)")
    raw_scheme, rest = url.split("://", 1)
    scheme = raw_scheme.lower()
    if scheme not in SCHEMES:
        return RedisTarget(
            problem=f"has a scheme kubeq does not support; expected one of {', '.join(SCHEMES)}"
        )
    userinfo, at, hostpart = rest.rpartition("@")
    has_credentials = bool(at)
    username = None
    if has_credentials:
        if any(ch in userinfo for ch in _AMBIGUOUS) or "#" in hostpart:
            return RedisTarget(scheme, has_credentials=True, problem=_UNESCAPED)
        user, _, password = userinfo.partition(":")
        # Without a password beside it, a "user" may be a password in the user's place.
        if password and _NAME.match(user):
            username = user
    if "#" in hostpart:
        return RedisTarget(scheme, has_credentials=has_credentials, problem="has a #fragment")
    location, _, _query = hostpart.partition("?")
    netloc, slash, path = location.partition("/")
    path = slash + path
    base = RedisTarget(scheme, username=username, has_credentials=has_credentials)
    if scheme == "unix":
        if netloc or not _SOCKET.match(path):
            return replace(base, problem="names no socket path (unix:///path/to/socket)")
        return replace(base, path=path)
    default_port = 26379 if scheme.endswith("+sentinel") else None
    parts = netloc.split(",") if scheme.endswith("+sentinel") else [netloc]
    hosts = [_host_port(p, default_port) for p in parts]
    if not netloc:
        return replace(base, problem="names no host")
    if any(h is None for h in hosts):
        return replace(base, problem="is malformed: a host or port is not a valid name or number")
    safe_hosts = tuple(h for h in hosts if h is not None)
    if not _urllib_agrees(url, scheme):
        return replace(base, problem=_UNESCAPED)
    segments = [s for s in path.split("/") if s]
    if scheme.endswith("+sentinel"):
        if not segments:
            return replace(base, hosts=safe_hosts, problem="names no service: .../<service>[/db]")
        if not _NAME.match(segments[0]) or len(segments) > 2:
            return replace(
                base, hosts=safe_hosts, problem="has a malformed path: .../<service>[/db]"
            )
        service, segments = f"/{segments[0]}", segments[1:]
    else:
        service = None
    if len(segments) > 1 or (segments and not _DB.match(segments[0])):
        return replace(
            base, hosts=safe_hosts, path=service, problem="has a malformed database number"
        )
    db = int(segments[0]) if segments else None
    return replace(base, hosts=safe_hosts, path=service, db=db)
