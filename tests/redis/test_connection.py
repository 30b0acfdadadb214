"""Connections: URLs, credentials, TLS options and an unreachable server, each a typed error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from kubeq.protocol import (
    AsyncClient,
    AuthenticationFailed,
    Client,
    ConnectionFailed,
    InvalidURL,
    KubeqError,
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


async def test_async_script_calls_survive_flush_kill_and_cancel(redis_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    """The asyncio client sends script calls packed by hiredis on a pooled connection of
    its own handling: a script flush reloads, a killed connection fails that call alone
    (typed) and the next one reconnects, and a call cancelled mid-flight never leaves its
    reply for the next call on that connection to read (redis-py's pool also checks a
    connection for unread data when handing it out: two layers)."""
    cfg = QueueConfig(name="fastq")
    async with await AsyncClient.from_url(redis_url, "fastq", config=cfg, clock=clock) as ac:
        ids = await ac.submit_many([{"type": "t", "payload": i} for i in range(50)])
        await ac.redis.script_flush()
        assert [c.id for c in (await ac.claim("w", 2)).tasks] == ids[:2]

        await ac.redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
        try:  # the pool may notice the closed socket first; else this call alone fails
            claim = await ac.claim("w", 1, claim_id="after-kill")
        except ConnectionFailed:
            claim = await ac.claim("w", 1, claim_id="after-kill")
        assert [c.id for c in claim.tasks] == [ids[2]]

        # A busy script holds Redis: the cancelled call's reply arrives after it gave up.
        busy = (
            "local t = redis.call('TIME') local start = t[1] * 1e6 + t[2] "
            "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - start > 300000 return 1"
        )
        sleeper = asyncio.create_task(ac.redis.eval(busy, 0))
        await asyncio.sleep(0.05)
        call = asyncio.create_task(ac.stats())
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await sleeper
        # Concurrent calls take every pooled connection, the cancelled call's included:
        # each must read its own reply (a claim's, not a stale stats reply).
        claims = await asyncio.gather(*(ac.claim("w", 1, claim_id=f"c{i}") for i in range(6)))
        assert all(len(c.tasks) == 1 for c in claims)
        stats = await asyncio.gather(*(ac.stats() for _ in range(6)))
        assert all(st.in_flight == 9 for st in stats)


def test_a_blocking_script_call_after_its_connection_was_killed_reconnects(
    client: Client,
) -> None:
    """Either the pool notices the closed socket when it hands the connection out, or the
    call's read fails (typed) and that call alone: re-sent with its claim id, the same
    tasks come back, each exactly once."""
    ids = client.submit_many([{"type": "t"} for _ in range(3)])
    client.redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
    try:
        claim = client.claim("w", 3, claim_id="k")
    except ConnectionFailed:
        claim = client.claim("w", 3, claim_id="k")
    assert [c.id for c in claim.tasks] == ids
    assert client.stats().in_flight == 3


async def test_an_argument_redis_cannot_take_is_a_typed_error_on_both_clients(
    client: Client, redis_url: str
) -> None:
    """Script calls are packed by hiredis, which refuses None with a TypeError: callers
    still get a KubeqError, as through redis-py's own packer."""
    with pytest.raises(KubeqError):
        client.cancel(None)  # type: ignore[arg-type]
    with pytest.raises(KubeqError):
        client.status(None)  # type: ignore[arg-type]
    async with await AsyncClient.from_url(redis_url, "q") as ac:
        with pytest.raises(KubeqError):
            await ac.cancel(None)  # type: ignore[arg-type]
