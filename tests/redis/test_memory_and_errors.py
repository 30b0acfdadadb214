"""Issue 9 items 6 and 12: Redis out of memory, ACL refusals and script errors reach
callers as KubeqErrors, and a refused script wrote nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import redis
from kubeq.protocol import (
    AsyncClient,
    Client,
    InvalidText,
    PermissionDenied,
    QueueConfig,
    RedisOutOfMemory,
    ScriptError,
    WorkerInfo,
    policy_problem,
)
from kubeq.redis_server import RedisServer


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    """A private server: these tests change its memory limit and ACL users."""
    with RedisServer() as server:
        yield server


def _fill_until_refused(client: Client) -> None:
    """Raise maxmemory just above what is used, then submit until Redis refuses."""
    used = int(client.redis.info("memory")["used_memory"])
    client.redis.config_set("maxmemory", used + 1024 * 1024)
    blob = "x" * 2_000
    for _ in range(10_000):
        try:
            client.submit("filler", blob)
        except RedisOutOfMemory:
            return
    raise AssertionError("Redis never ran out of memory")


def test_out_of_memory_refuses_writes_whole_and_keeps_leases_alive(
    small_redis: RedisServer,
) -> None:
    cfg = QueueConfig(name="oom", lease_seconds=30, heartbeat_seconds=10)
    with Client.from_url(small_redis.url, "oom", config=cfg) as client:
        client.submit_many([{"type": "t", "payload": i} for i in range(50)])
        running = client.claim("w", 10).tasks
        _fill_until_refused(client)
        before = client.stats()

        with pytest.raises(RedisOutOfMemory, match="out of memory"):
            client.submit("t")
        with pytest.raises(RedisOutOfMemory):
            client.claim("w2", 10)  # refused whole: nothing popped, nothing lost
        after = client.stats()
        assert (after.ready, after.in_flight) == (before.ready, before.in_flight)
        assert after.counters.get("claimed") == before.counters.get("claimed")

        # Heartbeats still keep leases alive (allow-oom), so nothing runs twice.
        held = [(c.id, c.token, c.level_index) for c in running]
        assert client.heartbeat("w", held, WorkerInfo(id="w")).lost == []
        # A settle is refused whole and can be retried once memory is back.
        settlements = [client.ops.completion(c, "done", 0) for c in running]
        with pytest.raises(RedisOutOfMemory):
            client.settle(settlements)
        assert client.stats().in_flight == 10
        client.reap()  # maintenance keeps working (it only frees)

        client.redis.config_set("maxmemory", 0)
        assert client.settle(settlements) == [True] * 10
        assert client.stats().counters["completed"] == 10


def test_eviction_policy_is_read_from_info_and_anything_but_noeviction_is_a_problem(
    small_redis: RedisServer,
) -> None:
    with Client.from_url(small_redis.url, "p", config=QueueConfig(name="p")) as client:
        assert client.eviction_policy() == "noeviction"
        assert policy_problem("noeviction") is None
        client.redis.config_set("maxmemory-policy", "allkeys-lru")
        policy = client.eviction_policy()
        assert policy == "allkeys-lru"
        problem = policy_problem(policy)
        assert problem is not None
        assert "noeviction" in problem


def test_a_read_only_acl_user_gets_stats_and_status_but_permission_denied_on_writes(
    small_redis: RedisServer,
) -> None:
    admin = redis.Redis.from_url(small_redis.url)
    admin.execute_command(
        "ACL", "SETUSER", "viewer", "on", ">pw", "~*", "&*", "+@read", "+evalsha_ro",
        "+script|load", "+ping", "+info", "+time",
    )  # fmt: skip
    cfg = QueueConfig(name="acl")
    with Client.from_url(small_redis.url, "acl", config=cfg) as producer:
        task_id = producer.submit("t")
    url = small_redis.url.replace("redis://", "redis://viewer:pw@")
    with Client.from_url(url, "acl", config=cfg) as viewer:
        assert viewer.stats().ready == 1  # EVALSHA_RO of a no-writes script
        assert viewer.status(task_id).id == task_id
        with pytest.raises(PermissionDenied, match="NOPERM"):
            viewer.submit("t")
        with pytest.raises(PermissionDenied):
            viewer.claim("w", 1)
    admin.close()


def test_a_script_error_is_a_protocol_error_with_a_clear_message(client: Client) -> None:
    task_id = client.submit("t")
    client.redis.delete(*client.ops._ready)  # a foreign writer removed the ready list
    with pytest.raises(ScriptError, match=f"task {task_id} has a record but is in no queue"):
        client.cancel(task_id)


def test_text_redis_cannot_encode_is_an_invalid_text_error(client: Client) -> None:
    with pytest.raises(InvalidText):
        client.cancel("lone \ud800")
    with pytest.raises(InvalidText):
        client.submit("t", {"text": "t\udc00"})
    with pytest.raises(InvalidText):
        client.submit("t", idempotency_key="k\ud800")


def test_an_idle_wait_longer_than_the_socket_timeout_is_not_an_unreachable_redis(
    redis_url: str,
) -> None:
    cfg = QueueConfig(name="idle")
    with Client.from_url(redis_url, "idle", config=cfg, timeout=0.5) as client:
        assert client.wait_for_work(1.5) is False


async def test_the_async_client_has_the_same_edges(redis_url: str) -> None:
    cfg = QueueConfig(name="async-edges")
    async with await AsyncClient.from_url(redis_url, "async-edges", config=cfg) as client:
        assert await client.eviction_policy() == "noeviction"
        await client.submit_many([{"type": "t"}] * 3)
        lost = await client.claim("w", 3, claim_id="c")
        again = await client.claim("w", 3, claim_id="c")
        assert [c.token for c in again.tasks] == [c.token for c in lost.tasks]
        assert (await client.stats()).in_flight == 3  # EVALSHA_RO through asyncio
        with pytest.raises(InvalidText):
            await client.cancel("\udc00")
        await client.redis.delete(client.keys.wake)
        assert await client.wait_for_work(0.05) is False
