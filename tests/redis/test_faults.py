"""Targeted faults the model does not cover well: OOM during a worker loop, eviction
policies, and a connection cut mid-batch through a real TCP proxy (issue 9, items 1, 5,
6 and 11).

Each test runs its own redis-server, so changing memory settings cannot leak into
other tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from model_support import ActorClock, CuttingProxy, ReferenceClock, snapshot

import redis
from kubeq.protocol import (
    ClaimedTask,
    Client,
    KubeqError,
    QueueConfig,
    QueueOps,
    TaskRequest,
    TaskStatus,
    WorkerInfo,
)
from kubeq.redis_server import RedisServer

LEASE_S = 30


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(extra=("--maxmemory-policy", "noeviction")) as s:
        yield s


def _config(name: str, **overrides: Any) -> QueueConfig:
    return QueueConfig.model_validate(
        {"name": name, "lease_seconds": LEASE_S, "heartbeat_seconds": 10, **overrides}
    )


def _places(url: str, config: QueueConfig) -> dict[str, list[str]]:
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        return snapshot(r, QueueOps(config).keys, config.level_names).places
    finally:
        r.close()


@pytest.mark.slow
@pytest.mark.protocol_edges
def test_an_oom_window_during_a_worker_loop_runs_no_task_twice_and_loses_none(
    server: RedisServer,
) -> None:
    """Memory runs out (maxmemory, noeviction) for longer than a lease while a producer,
    a worker and a reaper keep going; then it comes back. A correct worker keeps its
    settlements and retries them; the producer retries refused submits with the same
    idempotency key. Afterwards every accepted task ran exactly once and completed."""
    config = _config("oom", max_attempts=5)
    ref = ReferenceClock()
    client = Client.from_url(server.url, "oom", config=config, clock=ActorClock(ref))
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    raw: list[str] = []  # failures a caller met that were not KubeqErrors
    refused: Counter[str] = Counter()

    def attempt(what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except KubeqError as exc:
            refused[f"{what}: {type(exc).__name__}"] += 1
        except Exception as exc:
            raw.append(f"{what}: {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:120]}")
        return None

    to_submit = [f"job-{i:03d}" for i in range(120)]
    accepted: set[str] = set()
    runs: Counter[str] = Counter()
    held: dict[str, ClaimedTask] = {}
    unsettled: dict[str, Any] = {}
    oom_window = range(6, 18)  # 12 steps of 5 s: 60 s, twice the lease
    for step in range(120):
        admin.config_set("maxmemory", 1 if step in oom_window else 0)
        if to_submit:
            batch = to_submit[:10]
            reqs = [TaskRequest(type="t", payload=k, idempotency_key=k) for k in batch]
            ids = attempt("submit", client.submit_many, reqs)
            if ids is not None:
                accepted.update(ids)
                del to_submit[: len(batch)]
        if held:
            beat = attempt(
                "heartbeat",
                client.heartbeat,
                "w",
                [(c.id, c.token, c.level_index) for c in held.values()],
                WorkerInfo(id="w", in_flight=len(held)),
            )
            for lost in beat.lost if beat else []:
                held.pop(lost, None)
                unsettled.pop(lost, None)
        claim = attempt("claim", client.claim, "w", 8)
        for c in claim.tasks if claim else []:
            runs[c.id] += 1  # the handler runs
            held[c.id] = c
            unsettled[c.id] = client.ops.completion(c, {"ok": True}, client.clock())
        if unsettled:
            oks = attempt("settle", client.settle, list(unsettled.values()))
            if oks is not None:
                for tid in list(unsettled):
                    held.pop(tid, None)
                    del unsettled[tid]
        attempt("reap", client.reap)
        ref.advance_ms(5_000)
        if step > oom_window.stop and not to_submit and not held and runs.keys() >= accepted:
            break
    admin.config_set("maxmemory", 0)
    statuses = {tid: client.status(tid).status for tid in accepted}
    client.close()
    admin.close()

    problems = []
    if raw:
        problems.append(f"{len(raw)} raw exceptions reached callers, e.g. {raw[0]}")
    twice = [t for t, n in runs.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} tasks ran twice, e.g. {twice[0]}")
    lost = sorted(t for t, s in statuses.items() if s != TaskStatus.COMPLETED)
    if lost:
        problems.append(f"{len(lost)} accepted tasks never completed, e.g. {lost[0]}")
    assert not problems, "; ".join(problems)
    assert refused, "the OOM window refused nothing: the test did not test anything"
    assert len(accepted) == 120


@pytest.mark.protocol_edges
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "noeviction"])
def test_the_client_reports_the_eviction_policy(policy: str) -> None:
    """kubeq's promises need maxmemory-policy noeviction: under allkeys-lru Redis silently
    evicts accepted tasks. `Client.eviction_policy()` lets worker and operator refuse or
    warn (issue 9, item 6)."""
    with RedisServer(extra=("--maxmemory-policy", policy)) as s:
        client = Client.from_url(s.url, "evict", config=_config("evict"))
        try:
            assert client.eviction_policy() == policy
        finally:
            client.close()


@pytest.mark.slow
@pytest.mark.protocol_edges
def test_a_connection_cut_mid_batch_neither_duplicates_nor_loses_tasks(
    server: RedisServer,
) -> None:
    """submit_many of 3,000 tasks (three chunks); the reply to the second chunk is cut
    off after Redis ran it. Whatever the call answers, no task is enqueued twice (no
    blind re-send of the chunk), every id the caller is told about (returned, or carried
    by the error's `accepted`) exists, and only the cut chunk may be unaccounted for."""
    config = _config("cut")
    proxy = CuttingProxy(server.port)
    client = Client.from_url(proxy.url, "cut", config=config)
    try:
        client.ping()
        proxy.cut_reply_to(b'"task-01000"')
        reqs = [TaskRequest(type="t", payload=f"task-{i:05d}") for i in range(3000)]
        try:
            told = list(client.submit_many(reqs, chunk_size=1000))
        except KubeqError as exc:
            told = list(getattr(exc, "accepted", []))
        assert proxy.cuts == 1, "the cut did not happen: the test tested nothing"
    finally:
        client.close()
        proxy.close()
    places = _places(server.url, config)
    doubled = {t: w for t, w in places.items() if len(w) > 1}
    assert doubled == {}, f"{len(doubled)} tasks enqueued twice, e.g. {next(iter(doubled))}"
    assert set(told) <= set(places), "the caller was told of tasks that do not exist"
    unaccounted = set(places) - set(told)
    assert len(unaccounted) <= 1000, (
        f"the caller was told of {len(told)} tasks; Redis holds {len(places)}: "
        "the chunks accepted before the cut must be reported"
    )


@pytest.mark.slow
@pytest.mark.protocol_edges
def test_a_cut_claim_reply_costs_no_task_an_attempt(server: RedisServer) -> None:
    """The reply to a claim is lost after the script leased the tasks (issue 9, item 11).
    The worker does what the protocol asks: it re-sends the failed claim's claim id. With
    max_attempts=1, tasks that never started must still run, not be dead-lettered as
    lease_expired, and each runs once."""
    config = _config("cutclaim", max_attempts=1)
    ref = ReferenceClock()
    proxy = CuttingProxy(server.port)
    producer = Client.from_url(server.url, "cutclaim", config=config, clock=ActorClock(ref))
    worker = Client.from_url(proxy.url, "cutclaim", config=config, clock=ActorClock(ref))
    try:
        assert worker.claim("w", 1, claim_id="warm-up").tasks == []  # loads the script
        ids = producer.submit_many([{"type": "t", "payload": i} for i in range(6)])
        proxy.cut_reply_to(b"EVALSHA")
        ran: Counter[str] = Counter()
        for n in range(4):
            try:
                claim = worker.claim("w", 3, claim_id=f"claim-{n}")
            except KubeqError:  # re-sent at once, long before the lease could expire
                claim = worker.claim("w", 3, claim_id=f"claim-{n}")
            for c in claim.tasks:
                ran[c.id] += 1
                assert worker.settle([worker.ops.completion(c, None, worker.clock())]) == [True]
            ref.advance_ms((LEASE_S + 1) * 1000)
            producer.reap()
        assert proxy.cuts == 1, "the cut did not happen: the test tested nothing"
        statuses = {tid: producer.status(tid) for tid in ids}
    finally:
        worker.close()
        producer.close()
        proxy.close()
    never_ran = [(tid, t.reason) for tid, t in statuses.items() if t.status != TaskStatus.COMPLETED]
    assert never_ran == [], f"tasks that never started lost their only attempt: {never_ran}"
    assert all(ran[tid] == 1 for tid in ids), ran
