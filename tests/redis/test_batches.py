"""Issue 9 item 1: every batch size the API allows is safe (no unbounded unpack in Lua)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kubeq.protocol import (
    MAX_SCRIPT_BATCH,
    Client,
    ConfigError,
    ScriptError,
    Settlement,
    TaskRequest,
    WorkerInfo,
)
from kubeq.protocol.ops import ScriptCall


def test_50k_submit_then_10k_claim_heartbeat_and_settle_through_the_public_api(
    client: Client,
) -> None:
    ids = client.submit_many({"type": "t", "payload": i} for i in range(50_000))
    assert len(ids) == len(set(ids)) == 50_000
    assert client.stats().ready == 50_000

    claim = client.claim("w", 10_000)
    assert len(claim.tasks) == 10_000
    assert not claim.malformed
    assert [c.task.payload for c in claim.tasks] == list(range(10_000))  # FIFO across chunks
    held = [(c.id, c.token, c.level_index) for c in claim.tasks]
    beat = client.heartbeat("w", held, WorkerInfo(id="w", in_flight=10_000))
    assert beat.lost == []
    assert beat.cancelled == []

    settled = client.settle([client.ops.completion(c, c.task.payload, 0) for c in claim.tasks])
    assert settled == [True] * 10_000
    stats = client.stats()
    assert (stats.ready, stats.in_flight, stats.counters["completed"]) == (40_000, 0, 10_000)
    assert client.status(ids[9_999]).result == 9_999


def test_chunks_with_idempotency_keys_and_chosen_ids_at_the_batch_bound(client: Client) -> None:
    """Chunks that carry the per-task checks (idempotency index, chosen-id flag) are sent
    in a longer tuple than plain ones; full chunks of that form, several task types, and a
    key repeated across chunks all land as one submit of the same tasks would."""
    n = 2 * MAX_SCRIPT_BATCH + 500
    reqs: list[dict[str, object]] = []
    first_of_key: dict[str, int] = {}
    for i in range(n):
        req: dict[str, object] = {"type": "a" if i % 2 else "b", "payload": i}
        if i % 3 == 0:
            key = f"k{i % 900}"  # repeats, within and across chunks
            req["idempotency_key"] = key
            first_of_key.setdefault(key, i)
        elif i % 5 == 1:
            req["id"] = f"chosen-{i}"
        reqs.append(req)
    ids = client.submit_many(reqs)
    assert len(ids) == n
    for i, tid in enumerate(ids):
        if i % 3 == 0:
            assert tid == ids[first_of_key[f"k{i % 900}"]]  # one task per key
        elif i % 5 == 1:
            assert tid == f"chosen-{i}"
    kept = {i for i in range(n) if i % 3 or first_of_key[f"k{i % 900}"] == i}
    assert len(set(ids)) == len(kept) == client.stats().ready
    types = client.type_stats()
    assert types["a"]["submitted"] == sum(1 for i in kept if i % 2)
    assert types["b"]["submitted"] == sum(1 for i in kept if not i % 2)
    assert {t.task.payload for t in client.claim("w", n).tasks} == kept


def test_10k_expired_leases_are_all_returned_by_one_reap(
    make_client: Callable[..., Client],
) -> None:
    client = make_client(lease_seconds=10, heartbeat_seconds=1)
    client.submit_many({"type": "t"} for _ in range(10_000))
    assert len(client.claim("w", 10_000).tasks) == 10_000
    client.clock.advance(11)  # type: ignore[attr-defined]
    report = client.reap()
    assert len(report.requeued) == 10_000
    assert client.stats().ready == 10_000


def test_10k_dead_letters_requeue_and_purge_in_chunks(client: Client) -> None:
    ids = client.submit_many({"type": "t", "max_attempts": 1} for _ in range(10_000))
    claim = client.claim("w", 10_000)
    client.settle([client.ops.dead_letter_malformed(_as_malformed(c), "w", 0) for c in claim.tasks])
    assert client.stats().dead == 10_000
    listed = client.dead_letters(offset=500, limit=20_000)  # read in pages of 1,000
    assert [d.task.id for d in listed] == [d.task.id for d in client.dead_letters(limit=10_000)][
        500:
    ]
    assert len(listed) == 9_500
    assert sorted(client.requeue_dead(ids)) == sorted(ids)
    assert client.stats().ready == 10_000
    again = client.claim("w", 10_000)
    client.settle([client.ops.dead_letter_malformed(_as_malformed(c), "w", 0) for c in again.tasks])
    assert client.purge_dead(ids) == 10_000
    assert client.stats().dead == 0


def _as_malformed(c):  # type: ignore[no-untyped-def]
    from kubeq.protocol import MalformedClaim

    return MalformedClaim(c.id, c.token, c.level_index, c.task.attempts, "x")


@pytest.mark.parametrize("chunk", [0, -1, MAX_SCRIPT_BATCH + 1, 5_000, True, 2.5])
def test_chunk_size_outside_the_script_bound_is_refused_before_anything_is_written(
    client: Client, chunk: object
) -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        client.submit_many([{"type": "t"}] * 10, chunk_size=chunk)  # type: ignore[arg-type]
    assert client.stats().ready == 0


@pytest.mark.parametrize("n", [-1, True, 1.5])
def test_claim_size_must_be_a_non_negative_integer(client: Client, n: object) -> None:
    with pytest.raises(ConfigError, match="claim size"):
        client.claim("w", n)  # type: ignore[arg-type]


@pytest.mark.parametrize("script", ["submit", "claim", "settle", "heartbeat", "purge"])
def test_a_script_refuses_an_oversized_batch_whole(client: Client, script: str) -> None:
    """Defence in depth: even a caller bypassing the ops gets a clear error, nothing written."""
    client.submit("t")
    before = client.redis.dbsize()
    n = MAX_SCRIPT_BATCH + 1
    ops = client.ops
    # Real calls built by the ops, with only the batch size forged: (call, index of N).
    calls = {
        "submit": (next(ops.submit_many([TaskRequest("t")], 0)), 5),
        "claim": (next(ops.claim("w", 1, 0, [0, 1, 2])), 1),
        "settle": (next(ops.settle([Settlement("a", 1, 1, "complete")], 0)), 3),
        "heartbeat": (next(ops.heartbeat("w", [], 0, WorkerInfo(id="w"))), 5),
        "purge": (next(ops.purge_dead(["a"])), 0),
    }
    call, at = calls[script]
    args = list(call.args)
    args[at] = n
    with pytest.raises(ScriptError, match="BADBATCH"):
        client.run(_one(ScriptCall(script, call.keys, args)))
    assert client.redis.dbsize() == before
    assert client.stats().ready == 1


def _one(call: ScriptCall):  # type: ignore[no-untyped-def]
    return (yield call)


def test_a_forged_submit_tuple_is_refused_before_anything_is_written(client: Client) -> None:
    call = next(client.ops.submit_many([TaskRequest("t", delay=5), TaskRequest("t")], 0))
    args = list(call.args)
    t = 8 if args[6] else 6  # a tuple's length: 8 with idempotency checks, else 6
    args[7 + t + 1] = 99  # the second task's level index (ARGV[8 + T + 1]): no such level
    before = client.redis.dbsize()
    with pytest.raises(ScriptError, match="BADSUBMIT"):
        client.run(_one(ScriptCall("submit", call.keys, args)))
    assert client.redis.dbsize() == before
    assert client.redis.get(client.keys.seq) is None  # not even the sequence counter
