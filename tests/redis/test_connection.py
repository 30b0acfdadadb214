"""Connections: URLs, credentials, TLS options and an unreachable server, each a typed error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubeq.protocol import (
    AsyncClient,
    AuthenticationFailed,
    Client,
    ConnectionFailed,
    InvalidURL,
    QueueConfig,
)
from kubeq.protocol.connection import connect, redacted
from kubeq.redis_server import RedisServer, free_port


@pytest.fixture(scope="module")
def secured() -> Iterator[RedisServer]:
    with RedisServer(
        password="s3cret", extra=("--user", "app", "on", ">apppass", "~*", "&*", "+@all")
    ) as server:
        yield server


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("localhost:6379", "no scheme"),
        ("http://localhost", "scheme kubeq does not support"),
        ("redis://host:notaport/0", "malformed"),
        ("redis://:pw@/0", "names no host"),
        ("redis+sentinel://h1:26379", "names no service"),
    ],
)
def test_bad_urls_are_refused_before_any_connection(url: str, match: str) -> None:
    with pytest.raises(InvalidURL, match=match):
        Client.from_url(url, "q")


def test_an_unreachable_server_is_connection_failed() -> None:
    with pytest.raises(ConnectionFailed, match="unreachable") as info:
        Client.from_url(f"redis://127.0.0.1:{free_port()}/0", "q", timeout=0.5)
    assert not isinstance(info.value, AuthenticationFailed)


def test_a_server_that_goes_away_mid_session_is_connection_failed(redis_url: str) -> None:
    server = RedisServer().start()
    client = Client.from_url(server.url, "q", config=QueueConfig(name="q"), timeout=0.5)
    client.submit("t")
    server.close()
    with pytest.raises(ConnectionFailed):
        client.submit("t")
    client.close()


def test_a_wrong_password_is_authentication_failed(secured: RedisServer) -> None:
    with pytest.raises(AuthenticationFailed, match="refused the credentials"):
        Client.from_url(f"redis://:wrong@127.0.0.1:{secured.port}/0", "q")
    with pytest.raises(AuthenticationFailed):
        Client.from_url(f"redis://127.0.0.1:{secured.port}/0", "q")  # no password at all


def test_acl_user_and_password_from_the_url_work(secured: RedisServer) -> None:
    with Client.from_url(f"redis://app:apppass@127.0.0.1:{secured.port}/0", "q") as client:
        tid = client.submit("t", {"ok": True})
        assert client.status(tid).payload == {"ok": True}
    with pytest.raises(AuthenticationFailed):
        Client.from_url(f"redis://app:nope@127.0.0.1:{secured.port}/0", "q")


def test_passwords_never_appear_in_messages() -> None:
    assert redacted("redis://u:topsecret@h:1/0") == "redis://u:***@h:1/0"
    with pytest.raises(ConnectionFailed) as info:
        Client.from_url(f"redis://u:topsecret@127.0.0.1:{free_port()}/0", "q", timeout=0.3)
    assert "topsecret" not in str(info.value)


def test_tls_and_sentinel_urls_build_the_right_clients() -> None:
    tls = connect("rediss://h:6380/0?ssl_cert_reqs=none")
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"
    sentinel = connect("redis+sentinel://s1:26379,s2:26380/mymaster/2")
    assert sentinel.connection_pool.service_name == "mymaster"
    assert [
        c.connection_pool.connection_kwargs["port"]
        for c in sentinel.connection_pool.sentinel_manager.sentinels
    ] == [26379, 26380]


async def test_async_client_speaks_the_same_protocol(redis_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    cfg = QueueConfig(name="aq")
    async with await AsyncClient.from_url(redis_url, "aq", config=cfg, clock=clock) as ac:
        ids = await ac.submit_many([{"type": "t", "payload": i} for i in range(3)])
        claim = await ac.claim("w", 2)
        assert [c.id for c in claim.tasks] == ids[:2]
        assert await ac.settle([ac.ops.completion(claim.tasks[0], "r", clock.now)]) == [True]
        assert await ac.result(ids[0], timeout=1) == "r"
        stats = await ac.stats()
        assert (stats.ready, stats.in_flight) == (1, 1)
    # A sync client sees the very same state: one implementation of keys and scripts.
    with Client.from_url(redis_url, "aq", config=cfg, clock=clock) as sc:
        assert sc.status(ids[1]).status == "running"


async def test_async_client_errors_are_typed_too() -> None:
    with pytest.raises(ConnectionFailed):
        await AsyncClient.from_url(f"redis://127.0.0.1:{free_port()}/0", "q", timeout=0.3)


def test_scripts_are_reloaded_after_a_script_flush(client: Client) -> None:
    client.submit("t")
    client.redis.script_flush()
    assert len(client.claim("w", 5).tasks) == 1
