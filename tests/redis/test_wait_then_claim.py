"""The idle worker's wait and claim in one round trip (BLPOP with the claim pipelined behind
it), and what makes dropping such a wait safe: abandoning its claim id.

Attacked: a claim queued behind a wait on a connection the worker gave up on may run
later, when a wake-up arrives; it must take nothing then (its id is spent), and one that
already ran must give its tasks back without charging an attempt."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import hiredis
import pytest
from tests.conftest import FakeClock

from kubeq.protocol import AsyncClient, Client, QueueConfig, TaskStatus
from kubeq.protocol.client import _eval_command
from kubeq.protocol.ops import ScriptCall
from kubeq.protocol.scripts import SCRIPTS

_names = itertools.count()


def test_an_abandoned_claim_id_takes_nothing_when_its_claim_runs_later(
    make_client: Callable[..., Client],
) -> None:
    client = make_client()
    client.submit_many([{"type": "t", "payload": i} for i in range(5)])
    assert client.abandon_claim("w", "c-1").tasks == []
    assert client.claim("w", 3, claim_id="c-1").tasks == []  # spent: nothing leased
    st = client.stats()
    assert (st.ready, st.in_flight) == (5, 0)
    assert len(client.claim("w", 3, claim_id="c-2").tasks) == 3  # a new id works


def test_abandoning_a_claim_that_ran_hands_back_its_tasks_to_release_uncharged(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(max_attempts=1)
    ids = client.submit_many([{"type": "t", "payload": i} for i in range(5)])
    ran = client.claim("w", 3, claim_id="c-1")  # its reply "never arrived"
    back = client.abandon_claim("w", "c-1")
    assert [(c.id, c.token) for c in back.tasks] == [(c.id, c.token) for c in ran.tasks]
    assert client.settle([client.ops.release(c) for c in back.tasks]) == [True] * 3
    st = client.stats()
    assert (st.ready, st.in_flight, st.dead) == (5, 0, 0)
    for tid in ids[:3]:
        assert (client.status(tid).status, client.status(tid).attempts) == (
            TaskStatus.PENDING,
            0,
        )
    # Released: abandoning again returns nothing (the holder check), and the claim id
    # repeated takes nothing new either.
    assert client.abandon_claim("w", "c-1").tasks == []
    assert client.claim("w", 3, claim_id="c-1").tasks == []
    # With max_attempts 1 every task still runs once: none was charged by the detour.
    got = client.claim("w", 5, claim_id="c-2").tasks
    assert client.settle([client.ops.completion(c, 1, 0) for c in got]) == [True] * 5


def test_a_claim_queued_behind_a_dropped_wait_takes_nothing_once_abandoned(
    make_client: Callable[..., Client], clock: FakeClock
) -> None:
    """The race the abandon closes: the worker gave up on a connection blocked in BLPOP
    with a claim behind it, but Redis has not noticed yet; a wake-up then serves the BLPOP
    and the claim runs."""
    client = make_client()
    client.claim("w", 1)  # loads the script
    order = client.ops.serving_order(random.Random(0))  # every level
    call = next(client.ops.claim("w", 3, clock(), order, None, "zombie"))
    assert isinstance(call, ScriptCall)
    script = SCRIPTS["claim"]
    host, port = (
        client.redis.connection_pool.connection_kwargs["host"],
        int(client.redis.connection_pool.connection_kwargs["port"]),
    )
    with socket.create_connection((host, port), timeout=5) as zombie:
        zombie.sendall(
            hiredis.pack_command(("BLPOP", client.keys.wake, 5))
            + hiredis.pack_command(
                (_eval_command(script), script.sha, len(call.keys), *call.keys, *call.args)
            )
        )
        wait_until_blocked(client)
        assert client.abandon_claim("w", "zombie").tasks == []
        ids = client.submit_many([{"type": "t"}] * 3)  # pushes a wake-up: the BLPOP ends
        replies = read_replies(zombie, 2)
    assert replies[0] is not None  # the wait did end on that wake-up ...
    assert replies[1] == [0]  # ... and the claim behind it took nothing
    st = client.stats()
    assert (st.ready, st.in_flight) == (3, 0)
    assert {c.id for c in client.claim("w", 3).tasks} == set(ids)


def wait_until_blocked(client: Client) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if int(client.redis.info("clients")["blocked_clients"]) > 0:
            return
        time.sleep(0.01)
    raise AssertionError("the zombie connection never blocked")


def read_replies(sock: socket.socket, n: int) -> list[object]:
    reader = hiredis.Reader()
    out: list[object] = []
    while len(out) < n:
        reader.feed(sock.recv(65536))
        while (reply := reader.gets()) is not False and len(out) < n:
            out.append(reply)
    return out


@pytest.fixture
def config() -> QueueConfig:
    return QueueConfig.model_validate({"name": f"wq{next(_names)}"})


@pytest.fixture
def producer(redis_url: str, config: QueueConfig) -> Iterator[Client]:
    with Client.from_url(redis_url, config.name, config=config) as c:
        yield c


@pytest.fixture
async def aclient(redis_url: str, config: QueueConfig) -> AsyncIterator[AsyncClient]:
    c = await AsyncClient.from_url(redis_url, config.name, config=config)
    yield c
    await c.close()


async def test_a_submit_during_the_wait_is_claimed_by_the_claim_behind_it(
    aclient: AsyncClient, producer: Client
) -> None:
    waiting = asyncio.create_task(aclient.wait_then_claim(5.0, "w", 4, claim_id="a"))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # an empty queue: it blocks
    tid = producer.submit("t", 1)
    woken = await asyncio.wait_for(waiting, 4)
    assert woken.woke
    assert [c.id for c in woken.claim.tasks] == [tid]
    assert producer.status(tid).status == TaskStatus.RUNNING
    # The claim id was recorded: a lost reply would be recoverable like any claim's.
    again = await aclient.claim("w", 4, claim_id="a")
    assert [c.id for c in again.tasks] == [tid]


async def test_a_wait_that_times_out_still_claims_what_came_due(
    aclient: AsyncClient, producer: Client
) -> None:
    tid = producer.submit("t", 1, delay=0.3)  # due later: no wake-up is pushed for it
    producer.redis.delete(producer.keys.wake)
    woken = await aclient.wait_then_claim(0.6, "w", 4, claim_id="b")
    assert not woken.woke
    assert [c.id for c in woken.claim.tasks] == [tid]


async def test_the_claim_behind_the_wait_stays_within_one_script_batch(
    aclient: AsyncClient, producer: Client
) -> None:
    from kubeq.protocol import MAX_SCRIPT_BATCH

    producer.submit_many([{"type": "t"}] * (MAX_SCRIPT_BATCH + 5))
    woken = await aclient.wait_then_claim(1.0, "w", MAX_SCRIPT_BATCH + 5, claim_id="c")
    assert len(woken.claim.tasks) == MAX_SCRIPT_BATCH
    assert producer.stats().ready == 5


async def test_after_a_script_flush_the_claim_behind_the_wait_is_sent_again(
    aclient: AsyncClient, producer: Client
) -> None:
    tid = producer.submit("t", 1)
    producer.redis.script_flush()
    woken = await aclient.wait_then_claim(1.0, "w", 4, claim_id="d")
    assert [c.id for c in woken.claim.tasks] == [tid]
    assert producer.stats().in_flight == 1


async def test_a_cancelled_wait_drops_its_connection_and_abandoning_makes_it_safe(
    aclient: AsyncClient, producer: Client
) -> None:
    waiting = asyncio.create_task(aclient.wait_then_claim(5.0, "w", 4, claim_id="e"))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await aclient.abandon_claim("w", "e")).tasks == []
    producer.submit_many([{"type": "t"}] * 2)
    await asyncio.sleep(0.3)  # were the claim still queued somewhere, it would run now
    st = producer.stats()
    assert (st.ready, st.in_flight) == (2, 0)
    # The pool is usable afterwards: no connection came back with a reply unread.
    assert len((await aclient.claim("w", 2)).tasks) == 2


async def test_a_claimed_record_that_is_not_utf8_fails_as_a_plain_claim_does(
    aclient: AsyncClient, producer: Client, redis_url: str
) -> None:
    """Planted behind the protocol's back (no producer can write one): the reply cannot be
    decoded. The pipelined claim reports it as `claim` does, a KubeqError naming it, not
    a raw UnicodeDecodeError, and its connection is not handed out again half-read."""
    import redis as sync_redis
    from kubeq.protocol.errors import InvalidText

    raw = sync_redis.Redis.from_url(redis_url)
    tid = producer.submit("t", 1)
    raw.hset(producer.keys.tasks, tid, b'{"type":"t","x":"\xff\xfe"}')
    with pytest.raises(InvalidText):
        await aclient.wait_then_claim(1.0, "w", 4, claim_id="f")
    again = producer.submit("t", 2)
    raw.hset(producer.keys.tasks, again, b'{"type":"t","x":"\xff"}')
    with pytest.raises(InvalidText):
        await aclient.claim("w", 4, claim_id="g")
    raw.close()
    assert await aclient.redis.ping()  # the pool still answers
