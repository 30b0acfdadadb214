"""Issue 9 item 9: leases, reaping, promotion and the rate limit hold with pods' clocks
off by a minute either way. Clients on the default clock (`clock=None`) decide time-bound
things with Redis's own clock; each actor here runs with its wall clock shifted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kubeq.protocol import Client, QueueConfig, RateLimit, WorkerInfo

REAL_TIME_NS = time.time_ns
SKEW_S = 60


@contextmanager
def skewed(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[None]:
    """This process's wall clock runs `seconds` off while the block runs."""
    offset = int(seconds * 1e9)
    monkeypatch.setattr(time, "time_ns", lambda: REAL_TIME_NS() + offset)
    try:
        yield
    finally:
        monkeypatch.setattr(time, "time_ns", REAL_TIME_NS)


@pytest.fixture
def actors(redis_url: str) -> Iterator[tuple[Client, Client, Client]]:
    cfg = QueueConfig(name="skew", lease_seconds=30, heartbeat_seconds=10)
    clients = [Client.from_url(redis_url, "skew", config=cfg) for _ in range(3)]
    yield clients[0], clients[1], clients[2]
    for c in clients:
        c.close()


def test_a_reaper_whose_clock_runs_ahead_does_not_take_live_leases(
    actors: tuple[Client, Client, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    producer, worker, reaper = actors
    producer.submit_many([{"type": "t"}] * 5)
    with skewed(monkeypatch, -SKEW_S):  # the worker's clock is a minute behind
        claimed = worker.claim("w", 5).tasks
        held = [(c.id, c.token, c.level_index) for c in claimed]
        assert worker.heartbeat("w", held, WorkerInfo(id="w")).lost == []
    with skewed(monkeypatch, +SKEW_S):  # the reaper's a minute ahead: past every lease
        report = reaper.reap()
    assert report.requeued == []
    assert report.dead == []
    assert reaper.claim("other", 5).tasks == []  # no duplicate execution
    assert worker.settle([worker.ops.completion(c, 1, 0) for c in claimed]) == [True] * 5


def test_a_delay_counts_from_redis_time_whatever_the_producer_clock(
    actors: tuple[Client, Client, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    producer, worker, _ = actors
    with skewed(monkeypatch, -SKEW_S):
        producer.submit("t", delay=30)  # due in 30 s, not 30 s ago
    with skewed(monkeypatch, +SKEW_S):
        producer.submit("t", delay=0.2)
        assert worker.claim("w", 5).tasks == []  # neither is due yet
    time.sleep(0.3)
    with skewed(monkeypatch, -SKEW_S):
        assert len(worker.claim("w", 5).tasks) == 1  # only the short delay, on time
    stats = worker.stats()
    assert (stats.delayed, stats.in_flight) == (1, 1)


def test_the_rate_limit_holds_when_claimers_clocks_disagree(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = QueueConfig(name="rate", rate_limit=RateLimit(per_second=1 / 60, burst=1))
    fast, slow = (Client.from_url(redis_url, "rate", config=cfg) for _ in range(2))
    fast.submit_many([{"type": "t"}] * 10)
    started = 0
    for _ in range(6):
        with skewed(monkeypatch, +SKEW_S):
            started += len(fast.claim("a", 10).tasks)
        with skewed(monkeypatch, -SKEW_S):
            started += len(slow.claim("b", 10).tasks)
    assert started == 1  # one per minute: the burst, and nothing more within this test
    fast.close()
    slow.close()
