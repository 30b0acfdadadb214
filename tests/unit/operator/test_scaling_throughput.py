"""Scaling on throughput (autoscaling.targetDrainSeconds): Little's law on the queue's own
counters, with a fake clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kubeq_operator.scaling import (
    History,
    Observation,
    Rates,
    ScalingPolicy,
    decide_replicas,
    measured_rates,
    throughput_need,
)

POLICY = ScalingPolicy(
    min_replicas=1,
    max_replicas=20,
    target_backlog_per_replica=50,
    scale_up_stabilization_seconds=0,
    scale_down_stabilization_seconds=0,
    cooldown_to_zero_seconds=0,
    poll_interval_seconds=1,
    concurrency=10,
    target_drain_seconds=2,
)


def obs(at: float, waiting: int, in_flight: int, submitted: int, claimed: int) -> Observation:
    return Observation(
        at=at,
        waiting_by_priority={"default": waiting},
        in_flight=in_flight,
        submitted=submitted,
        claimed=claimed,
    )


def steady(
    policy: ScalingPolicy, *, arrivals: float, service: float, waiting: int, seconds: int = 4
) -> list[int]:
    """Replicas decided each second of a steady load: `arrivals` tasks/s, each holding a
    slot `service` seconds (so arrivals * service tasks in flight, by Little's law)."""
    history, replicas, out = History(), 1, []
    for t in range(seconds + 1):
        n = int(arrivals * t)
        o = obs(float(t), waiting, int(arrivals * service), n + waiting, n)
        d = decide_replicas(o, policy, history, replicas, float(t))
        history, replicas = d.history, d.replicas
        out.append(replicas)
    return out


def test_rates_by_littles_law() -> None:
    history = History()
    for t, claimed, in_flight in ((0, 0, 20), (1, 200, 20), (2, 400, 20)):
        history = history.count(obs(t, 0, in_flight, claimed + 10, claimed), 5)
    rates = measured_rates(history)
    assert rates == Rates(seconds=2, arrivals=200, claims=200, in_flight=20)
    assert rates.service_seconds == pytest.approx(0.1)  # 20 in flight / 200 per second


def test_need_is_arrivals_plus_draining_over_capacity() -> None:
    rates = Rates(seconds=5, arrivals=250, claims=250, in_flight=25)  # 0.1 s per task
    need, why = throughput_need(rates, waiting=100, concurrency=10, drain_seconds=2) or (0, "")
    # One worker: 10 slots / 0.1 s = 100 tasks/s; wanted 250 + 100 / 2 = 300/s → 3.
    assert need == pytest.approx(3.0)
    assert why == (
        "arrivals 250.0/s + waiting 100 / drain 2 s = 300.0/s at 100.0/s per worker"
        " (0.10 s per task x 10) → 3"
    )
    # Nothing claimed in the window: capacity unknown, no answer.
    idle = Rates(seconds=5, arrivals=0, claims=0, in_flight=0)
    assert throughput_need(idle, waiting=5, concurrency=10, drain_seconds=2) is None


def test_decisions_follow_throughput_not_backlog_size() -> None:
    # 250 short tasks/s (0.1 s each): 3 workers of 10 slots keep up.
    assert steady(POLICY, arrivals=250, service=0.1, waiting=0)[-1] == 3
    # Same arrivals, tasks 10x longer: ten times the workers (capped at 20).
    assert steady(POLICY, arrivals=250, service=1.0, waiting=0)[-1] == 20
    # A backlog waiting on top: drained within 2 s → more workers.
    assert steady(POLICY, arrivals=250, service=0.1, waiting=400)[-1] == 5  # (250+200)/100
    # The backlog rule (no targetDrainSeconds) on the same readings only counts tasks.
    backlog_rule = replace(POLICY, target_drain_seconds=None)
    assert steady(backlog_rule, arrivals=250, service=0.1, waiting=400)[-1] == 9  # 425 / 50


def test_falls_back_to_the_backlog_rule_until_measured() -> None:
    d = decide_replicas(obs(0, 300, 0, 300, 0), POLICY, History(), 1, 0.0)
    assert d.replicas == 6  # one reading: ceil(300 / 50)
    assert d.reason.startswith("backlog 300")
    # A second reading but nothing claimed yet (a pool at zero): still the backlog rule.
    d = decide_replicas(obs(1, 300, 0, 300, 0), POLICY, d.history, 6, 1.0)
    assert d.reason.startswith("backlog 300")
    # Claims seen: throughput.
    d = decide_replicas(obs(2, 100, 20, 300, 200), POLICY, d.history, 6, 2.0)
    assert d.reason.startswith("arrivals")


def test_running_long_tasks_keep_their_workers() -> None:
    # 3 long tasks/s of 10 s: 30 in flight need 3 workers whatever the rates say.
    assert steady(POLICY, arrivals=3, service=10, waiting=0)[-1] == 3


def test_counter_reset_restarts_the_window() -> None:
    history = History()
    history = history.count(obs(0, 0, 5, 1000, 1000), 5)
    history = history.count(obs(1, 0, 5, 1100, 1100), 5)
    history = history.count(obs(2, 0, 5, 10, 10), 5)  # Redis flushed: counters restart
    assert len(history.counts) == 1
    assert measured_rates(history) is None


def test_window_is_bounded() -> None:
    history = History()
    for t in range(100):
        history = history.count(obs(t, 0, 1, t, t), POLICY.rate_window_seconds)
    assert [e[0] for e in history.counts] == [94, 95, 96, 97, 98, 99]


def test_scale_down_removes_only_idle_workers() -> None:
    from kubeq_operator.scaling import Decision, keep_busy

    before = History(last_scale_at=5.0)
    down = Decision(3, "r", replace(before, last_scale_at=9.0), "down", 3)
    # 8 workers, 6 of them busy: down to 6 (the two idle ones), not 3.
    kept = keep_busy(down, current=8, busy=6, before=before)
    assert (kept.replicas, kept.direction) == (6, "down")
    assert kept.reason == "r, kept at 6: 6 workers busy (only idle ones go)"
    assert kept.history.last_scale_at == 9.0
    # All busy: no change, and the scale time stays where it was.
    held = keep_busy(down, current=8, busy=8, before=before)
    assert (held.replicas, held.direction, held.history.last_scale_at) == (8, "none", 5.0)
    # Enough idle workers, or not a scale-down: untouched.
    assert keep_busy(down, current=8, busy=2, before=before) is down
    up = Decision(9, "r", before, "up", 9)
    assert keep_busy(up, current=8, busy=8, before=before) is up
