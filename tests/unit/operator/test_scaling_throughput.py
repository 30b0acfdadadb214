"""Scaling on throughput (autoscaling.targetDrainSeconds): Little's law on the queue's own
counters, with a fake clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kubeq_operator.core.scaling import (
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
    assert rates == Rates(seconds=2, arrivals=200, claims=200, in_flight=20, intervals=2)
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
    from kubeq_operator.core.scaling import Decision, keep_busy

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


WINDOWED = replace(POLICY, scale_down_stabilization_seconds=15)


def run_load(
    policy: ScalingPolicy,
    phases: list[tuple[int, float, float, int]],
    replicas: int,
    busy: int | None = None,
) -> list[tuple[int, int, str]]:
    """Replicas decided each second through phases of (seconds, arrivals/s, seconds each
    task holds a slot, waiting): counters grow with the arrivals, in flight by Little's
    law; the waiting tasks are not arrivals (due retries, say). `busy` workers (None:
    none) are what keep_busy sees before a scale-down."""
    from kubeq_operator.core.scaling import keep_busy

    history, out, t, submitted = History(), [], 0, 0
    for seconds, arrivals, service, waiting in phases:
        for _ in range(seconds):
            submitted += int(arrivals)
            o = obs(float(t), waiting, int(arrivals * service), submitted, submitted)
            before = history
            d = decide_replicas(o, policy, history, replicas, float(t))
            if busy is not None:
                d = keep_busy(d, replicas, busy, before)
            history, replicas = d.history, d.replicas
            out.append((t, replicas, d.reason))
            t += 1
    return out


def test_scale_down_follows_the_arrival_rate_over_the_window_not_its_peak() -> None:
    # 20 s of 250 short tasks/s (3 workers), then 5/s (1 worker). The HPA's rule holds the
    # peak recommendation for the whole 15 s window; the window's *mean* arrival rate
    # stops needing the third worker after a few seconds and the second one well before
    # the window has passed.
    run = run_load(WINDOWED, [(20, 250, 0.1, 0), (20, 5, 0.1, 0)], replicas=3)
    assert [r for t, r, _ in run if t == 19] == [3]
    after = {t - 20: r for t, r, _ in run if t >= 20}
    assert after[0] == 3  # arrivals just fell: the window still needs 3
    assert after[8] <= 2
    assert after[12] == 1  # the HPA's rule would hold 3 until after[15]
    why = next(reason for t, _, reason in run if t == 21)
    assert "by the arrivals over the scale-down window (15 s)" in why
    # Down only: never below what the arrivals of now need.
    assert all(r >= 3 for t, r, _ in run if 3 <= t < 20)


def test_a_drained_backlog_frees_its_workers_without_waiting_for_the_window() -> None:
    # Steady 50/s (1 worker at 0.1 s); 900 tasks come due: draining them in 2 s needs 5
    # workers. Once they are drained the window's arrivals need 1 again: the extra
    # workers were for the backlog, which is gone, so they go once a rate window (5 s)
    # has passed since they were started, not after the whole 15 s window.
    run = run_load(WINDOWED, [(6, 50, 0.1, 0), (1, 50, 0.1, 900), (10, 50, 0.1, 0)], replicas=1)
    by_t = {t: r for t, r, _ in run}
    assert by_t[6] == 5  # (50 + 900 / 2) / 100
    assert [by_t[t] for t in range(7, 11)] == [5] * 4  # just started: kept
    assert "held at 5 by a scale-up 1 s ago (within the rate window, 5 s)" in run[7][2]
    assert by_t[11] == 1  # the HPA's rule would hold 5 until t = 21


def test_windowed_scale_down_still_keeps_busy_workers() -> None:
    run = run_load(WINDOWED, [(20, 250, 0.1, 0), (20, 5, 0.1, 0)], replicas=3, busy=3)
    assert all(r == 3 for _, r, _ in run)


def test_no_rates_over_the_window_falls_back_to_the_highest_recommendation() -> None:
    # The backlog rule (no targetDrainSeconds) keeps the HPA's semantics exactly.
    backlog_rule = replace(WINDOWED, target_drain_seconds=None)
    run = run_load(backlog_rule, [(5, 0, 0.1, 400), (20, 0, 0.1, 0)], replicas=1)
    by_t = {t: r for t, r, _ in run}
    assert by_t[4] == 8
    assert by_t[4 + 15] == 8  # held for the whole window
    assert by_t[4 + 16] == 1


def test_nothing_arriving_and_nothing_waiting_needs_no_capacity_estimate() -> None:
    # After a burst the arrivals stop: once nothing was claimed within the rate window
    # the capacity per worker is unknown, but nothing arriving and nothing waiting needs
    # no worker at any capacity. The rule must not fall back to the backlog rule and its
    # window of old recommendations (3 until t = 35).
    run = run_load(WINDOWED, [(20, 250, 0.1, 0), (20, 0, 0.1, 0)], replicas=3)
    by_t = {t: r for t, r, _ in run}
    assert by_t[32] == 1
    assert all(r == 1 for t, r, _ in run if t >= 32)
    assert not any(why.startswith("backlog") for t, _, why in run if t >= 20)


def test_the_in_flight_floor_never_adds_workers_on_throughput() -> None:
    # 3 workers keep up with 250 tasks/s of 0.1 s. A reading of 35 in flight (finished
    # tasks whose batched acknowledgement is still on its way hold their lease a moment
    # longer) is no reason for a fourth worker: the floor only keeps running tasks'
    # workers; the throughput need is what adds them.
    history = History()
    for t in range(6):
        n = 250 * t
        d = decide_replicas(obs(t, 0, 25 if t < 5 else 35, n, n), POLICY, history, 3, t)
        history = d.history
    assert (d.replicas, d.direction) == (3, "none"), d.reason
    # Still a floor on the way down: nothing arrives (a need of 0), but 35 long tasks
    # run: they keep the 3 workers.
    quiet = [obs(6 + t, 0, 35, 1250, 1250) for t in range(6)]
    for o in quiet:
        d = decide_replicas(o, POLICY, history, 3, o.at)
        history = d.history
    assert d.replicas == 3, d.reason
    assert "35 running need 3" in d.reason


def test_a_pool_still_filling_does_not_make_the_capacity_look_larger() -> None:
    # The bench's cold start: 200 tasks/s of 0.1 s arrive at one idle worker. A second
    # later it runs 10 and has claimed 77; the trapezoid over (0 in flight, 10 in flight)
    # says 0.065 s per task, a third too fast, and the rule alone would ask 2 workers
    # (254/s at 154/s each) where 3 are needed: the first seconds' tasks then wait.
    first = decide_replicas(obs(0, 0, 0, 0, 0), POLICY, History(), 1, 0.0)
    d = decide_replicas(obs(1, 119, 10, 196, 77), POLICY, first.history, 1, 1.0)
    assert d.replicas == 3  # the backlog rule's ceil(129 / 50) is the floor
    assert "one interval measured so far: at least the backlog 129" in d.reason
    unfloored = throughput_need(measured_rates(d.history) or Rates(0, 0, 0, 0), 119, 10, 2)
    assert unfloored is not None
    assert unfloored[0] < 2  # what the floor corrects
    # From the second interval on, the measured capacity decides alone, below the backlog
    # rule (here 4 where the backlog rule says 9).
    history, replicas = d.history, d.replicas
    for t in range(2, 4):
        n = 200 * t
        o = obs(float(t), 400, 20, n + 400, n)  # 20 in flight: 0.1 s per task
        d = decide_replicas(o, POLICY, history, replicas, float(t))
        history, replicas = d.history, d.replicas
    assert "interval measured so far" not in d.reason
    assert d.replicas == 4  # (200 + 400 / 2) / 100 per worker, where the backlog rule says 9
