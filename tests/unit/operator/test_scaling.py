"""The autoscaling decision, driven by a fake clock through scripted queue histories."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kubeq_operator.core.scaling import (
    Decision,
    History,
    Observation,
    ScalingPolicy,
    decide_replicas,
)
from kubeq_operator.core.spec import parse_spec

ROOT = Path(__file__).resolve().parents[3]

# Windows off unless a case turns them on, so each case shows one behaviour.
BASE = ScalingPolicy(
    min_replicas=0,
    max_replicas=10,
    target_backlog_per_replica=100,
    scale_up_stabilization_seconds=0,
    scale_down_stabilization_seconds=0,
    cooldown_to_zero_seconds=0,
    poll_interval_seconds=1,
)


@dataclass(frozen=True)
class Step:
    t: float
    ready: int = 0
    in_flight: int = 0
    reachable: bool = True
    expect: int | None = None  # replicas after this decision (None: not checked)


class FakeCluster:
    """Feeds observations to decide_replicas and applies each decision, as the operator does."""

    def __init__(self, policy: ScalingPolicy, replicas: int) -> None:
        self.policy, self.replicas, self.history = policy, replicas, History()
        self.decisions: list[Decision] = []

    def step(self, s: Step) -> Decision:
        obs = Observation(
            s.t, {"high": s.ready // 2, "low": s.ready - s.ready // 2}, s.in_flight, s.reachable
        )
        d = decide_replicas(obs, self.policy, self.history, self.replicas, now=s.t)
        self.history, self.replicas = d.history, d.replicas
        self.decisions.append(d)
        return d


def _every(start: float, stop: float, every: float = 1, **kw: object) -> list[Step]:
    """Polls from start to stop (inclusive) with the same queue state."""
    n = round((stop - start) / every)
    return [Step(start + i * every, **kw) for i in range(n + 1)]  # type: ignore[arg-type]


CASES: dict[str, tuple[ScalingPolicy, int, list[Step]]] = {
    "burst-scales-up-at-once-capped-at-max": (
        replace(BASE, max_replicas=8),
        1,
        [Step(0, ready=50, expect=1), Step(1, ready=5000, expect=8), Step(2, ready=5000, expect=8)],
    ),
    "in-flight-counts-as-load": (
        BASE,
        1,
        [Step(0, ready=0, in_flight=450, expect=5), Step(1, ready=100, in_flight=450, expect=6)],
    ),
    "min-clamp": (
        replace(BASE, min_replicas=2),
        5,
        [Step(0, expect=2), Step(1, ready=1, expect=2), Step(2, ready=250, expect=3)],
    ),
    "max-clamp-wins-over-windows-and-steps": (
        replace(BASE, max_replicas=4, scale_down_stabilization_seconds=300, max_step_down=1),
        10,
        [Step(0, ready=5000, expect=4)],
    ),
    "min-clamp-after-min-was-raised": (
        replace(BASE, min_replicas=3, max_step_up=1),
        0,
        [Step(0, expect=3)],
    ),
    "activation-keeps-an-idle-pool-at-zero": (
        replace(BASE, activation_backlog=10),
        0,
        [
            Step(0, ready=0, expect=0),
            Step(1, ready=10, expect=0),
            Step(2, ready=3, in_flight=7, expect=0),
            Step(3, ready=11, expect=1),
        ],
    ),
    "activation-does-not-stop-an-active-pool": (
        replace(BASE, activation_backlog=10, cooldown_to_zero_seconds=60),
        2,
        [Step(0, ready=5, expect=1), Step(1, ready=5, expect=1)],
    ),
    "zero-activation-starts-on-first-task": (
        BASE,
        0,
        [Step(0, expect=0), Step(1, ready=1, expect=1)],
    ),
    "cooldown-to-zero-needs-a-fully-empty-queue": (
        replace(BASE, cooldown_to_zero_seconds=30),
        1,
        [
            *_every(0, 29, ready=0, in_flight=0, expect=1),
            Step(30, expect=0),
            Step(31, expect=0),
        ],
    ),
    "a-task-restarts-the-cooldown": (
        replace(BASE, cooldown_to_zero_seconds=30),
        1,
        [
            *_every(0, 20, expect=1),
            Step(21, in_flight=1, expect=1),  # one running task: not empty
            *_every(22, 51, expect=1),
            Step(52, expect=0),
        ],
    ),
    "in-flight-blocks-scale-to-zero": (
        replace(BASE, cooldown_to_zero_seconds=5),
        1,
        _every(0, 100, every=5, in_flight=1, expect=1),
    ),
    "min-above-zero-never-goes-to-zero": (
        replace(BASE, min_replicas=1, cooldown_to_zero_seconds=0),
        3,
        _every(0, 10, expect=1),
    ),
    "scale-up-stabilization-takes-the-min-of-the-window": (
        replace(BASE, scale_up_stabilization_seconds=10),
        1,
        [
            Step(0, ready=100, expect=1),
            Step(5, ready=800, expect=1),  # 1 is still in the window
            Step(11, ready=800, expect=8),  # now only 8s are
        ],
    ),
    "scale-up-stabilization-ignores-a-spike": (
        replace(BASE, scale_up_stabilization_seconds=10),
        2,
        [
            *_every(0, 4, ready=200, expect=2),
            Step(5, ready=1000, expect=2),
            *_every(6, 20, ready=200, expect=2),
        ],
    ),
    "scale-down-stabilization-takes-the-max-of-the-window": (
        replace(BASE, scale_down_stabilization_seconds=30),
        1,
        [
            Step(0, ready=900, expect=9),
            Step(10, ready=300, expect=9),
            Step(29, ready=300, expect=9),
            Step(30, ready=300, expect=9),  # 9 recommended at t=0, still inside [0, 30]
            Step(31, ready=300, expect=3),
        ],
    ),
    "flapping-backlog-does-not-flap-the-pool": (
        replace(BASE, scale_down_stabilization_seconds=60),
        1,
        [
            Step(i * 5, ready=500 if i % 2 == 0 else 100, expect=5)
            for i in range(40)  # 200 s of 500/100/500/...
        ],
    ),
    "step-cap-up": (
        replace(BASE, max_step_up=2),
        1,
        [
            Step(0, ready=1000, expect=3),
            Step(1, ready=1000, expect=5),
            Step(2, ready=1000, expect=7),
        ],
    ),
    "step-cap-down": (
        replace(BASE, max_step_down=3),
        10,
        [Step(0, ready=100, expect=7), Step(1, ready=100, expect=4), Step(2, ready=100, expect=1)],
    ),
    "step-cap-applies-on-the-way-to-zero": (
        replace(BASE, max_step_down=2),
        5,
        [Step(0, expect=3), Step(1, expect=1), Step(2, expect=0)],
    ),
    "unreachable-holds-current": (
        BASE,
        4,
        [Step(0, ready=10_000, reachable=False, expect=4), Step(1, reachable=False, expect=4)],
    ),
    "unreachable-uses-fallback": (
        replace(BASE, fallback_replicas=2),
        7,
        [Step(0, reachable=False, expect=2), Step(1, ready=700, expect=7)],
    ),
    "fallback-is-bounded-by-min": (
        replace(BASE, min_replicas=3, fallback_replicas=1),
        5,
        [Step(0, reachable=False, expect=3)],
    ),
    "unreachable-restarts-the-cooldown": (
        replace(BASE, cooldown_to_zero_seconds=30),
        1,
        [
            *_every(0, 25, expect=1),
            Step(26, reachable=False, expect=1),
            *_every(27, 56, expect=1),  # empty since 27, not since 0
            Step(57, expect=0),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scaling_scenarios(case: str) -> None:
    policy, replicas, steps = CASES[case]
    cluster = FakeCluster(policy, replicas)
    for s in steps:
        d = cluster.step(s)
        if s.expect is not None:
            assert d.replicas == s.expect, f"t={s.t}: {d.reason}"


def test_reason_names_the_numbers() -> None:
    policy = replace(BASE, max_replicas=8)
    obs = Observation(0, {"high": 600, "low": 300}, in_flight=50)
    d = decide_replicas(obs, policy, History(), current_replicas=2, now=0)
    assert d.reason == "backlog 950 (waiting 900 + in-flight 50) / target 100 → 10, capped at max 8"
    assert (d.replicas, d.direction, d.recommendation, d.changed) == (8, "up", 8, True)


@pytest.mark.parametrize(
    ("policy", "current", "step", "fragment"),
    [
        (
            replace(BASE, fallback_replicas=2),
            5,
            Step(0, reachable=False),
            "Redis unreachable: fallbackReplicas 2",
        ),
        (BASE, 5, Step(0, reachable=False), "Redis unreachable: holding 5 replicas"),
        (
            replace(BASE, min_replicas=3),
            1,
            Step(0, reachable=False),
            "holding 3 replicas (clamped from 1)",
        ),
        (
            replace(BASE, activation_backlog=5),
            0,
            Step(0, ready=5),
            "not above activation backlog 5: staying at 0",
        ),
        (replace(BASE, min_replicas=4), 1, Step(0, ready=10), "→ 1, raised to min 4"),
        (replace(BASE, max_step_up=1), 1, Step(0, ready=900), "step limited to +1"),
        (replace(BASE, max_step_down=1), 9, Step(0, ready=100), "step limited to -1"),
        (replace(BASE, cooldown_to_zero_seconds=0), 1, Step(0), "empty for 0 s ≥ cooldown 0 s → 0"),
        (
            replace(BASE, enabled=False, static_replicas=3),
            1,
            Step(0, ready=10_000),
            "autoscaling disabled: spec.replicas 3",
        ),
    ],
)
def test_reasons(policy: ScalingPolicy, current: int, step: Step, fragment: str) -> None:
    d = FakeCluster(policy, current).step(step)
    assert fragment in d.reason


def test_stale_reading_counts_as_unreachable() -> None:
    policy = replace(BASE, poll_interval_seconds=10, fallback_replicas=1)
    obs = Observation(at=0, waiting_by_priority={"high": 5000})
    assert decide_replicas(obs, policy, History(), 4, now=30).replicas == 10
    d = decide_replicas(obs, policy, History(), 4, now=31)
    assert (d.replicas, d.reason) == (1, "reading 31 s old: fallbackReplicas 1")


def test_autoscaling_disabled_runs_spec_replicas() -> None:
    spec = parse_spec(
        {
            "redis": {"url": "redis://r"},
            "worker": {"image": "i", "app": "m:a"},
            "autoscaling": {"enabled": False},
            "replicas": 3,
        }
    )
    cluster = FakeCluster(ScalingPolicy.from_spec(spec), 0)
    assert [cluster.step(Step(t, ready=r)).replicas for t, r in [(0, 0), (1, 10_000)]] == [3, 3]


def test_last_scale_time_and_direction() -> None:
    cluster = FakeCluster(BASE, 1)
    a = cluster.step(Step(0, ready=100))
    b = cluster.step(Step(5, ready=500))
    c = cluster.step(Step(9, ready=200))
    assert (a.direction, a.history.last_scale_at) == ("none", None)
    assert (b.direction, b.history.last_scale_at) == ("up", 5)
    assert (c.direction, c.history.last_scale_at) == ("down", 9)


def test_history_is_bounded_by_the_longest_window() -> None:
    policy = replace(BASE, scale_up_stabilization_seconds=20, scale_down_stabilization_seconds=60)
    cluster = FakeCluster(policy, 1)
    for t in range(5000):
        cluster.step(Step(t, ready=(t * 37) % 1000))  # a new value at almost every poll
        times = [at for at, _ in cluster.history.recommendations]
        assert all(t - at <= 60 for at in times)
        assert len(times) <= 61


def test_history_coalesces_repeated_recommendations() -> None:
    cluster = FakeCluster(replace(BASE, scale_down_stabilization_seconds=3600), 1)
    for t in range(3000):
        cluster.step(Step(t, ready=300))
    assert cluster.history.recommendations == ((2999, 3),)


def test_history_hard_cap() -> None:
    history = History()
    for i in range(History.MAX_ENTRIES * 3):
        history = history.record(now=i, replicas=i % 2, window=1e9)
    assert len(history.recommendations) == History.MAX_ENTRIES
    assert history.recommendations[-1] == (History.MAX_ENTRIES * 3 - 1, 1)


def test_policy_from_spec() -> None:
    spec = parse_spec(
        {
            "redis": {"url": "redis://r"},
            "worker": {"image": "i", "app": "m:a"},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 8,
                "targetBacklogPerReplica": 200,
                "activationBacklog": 3,
                "scaleUpStabilizationSeconds": 5,
                "scaleDownStabilizationSeconds": 10,
                "cooldownToZeroSeconds": 20,
                "maxStepUp": 2,
                "maxStepDown": 1,
                "pollIntervalSeconds": 1,
                "fallbackReplicas": 4,
            },
        }
    )
    assert ScalingPolicy.from_spec(spec) == ScalingPolicy(
        min_replicas=1,
        max_replicas=8,
        target_backlog_per_replica=200,
        activation_backlog=3,
        scale_up_stabilization_seconds=5,
        scale_down_stabilization_seconds=10,
        cooldown_to_zero_seconds=20,
        max_step_up=2,
        max_step_down=1,
        fallback_replicas=4,
        poll_interval_seconds=1,
        enabled=True,
        static_replicas=1,
        concurrency=16,  # the worker's default
    )


@pytest.mark.parametrize(
    ("in_flight", "ready", "expected"),
    [
        (25, 0, 3),  # 25 running at 10 per worker need 3, though 25 / target 50 → 1
        (25, 100, 3),  # 125 / 50 → 3 as well
        (5, 400, 8),  # the target rules when waiting work dominates
        (95, 0, 8),  # never above max
    ],
)
def test_running_tasks_keep_the_workers_they_need(
    in_flight: int, ready: int, expected: int
) -> None:
    policy = ScalingPolicy(
        min_replicas=0,
        max_replicas=8,
        target_backlog_per_replica=50,
        scale_down_stabilization_seconds=0,
        concurrency=10,
    )
    obs = Observation(at=100.0, waiting_by_priority={"default": ready}, in_flight=in_flight)
    decision = decide_replicas(obs, policy, History(), current_replicas=6, now=100.0)
    assert decision.replicas == expected
    if in_flight > 10 and ready == 0:
        assert f"{in_flight} running need" in decision.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_replicas": 5, "max_replicas": 4},
        {"min_replicas": -1},
        {"target_backlog_per_replica": 0},
        {"max_step_up": 0},
    ],
)
def test_invalid_policies(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        ScalingPolicy(**kwargs)  # type: ignore[arg-type]


def test_worked_example_in_the_docs() -> None:
    """docs/operator.md's worked example is what the code does, row by row."""
    doc = (ROOT / "docs" / "operator.md").read_text()
    section = doc.split("### Worked example", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(
        r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \| \**(\d+)\**: `(.*?)`", section, re.MULTILINE
    )
    assert len(rows) >= 8
    policy = replace(
        BASE,
        max_replicas=8,
        target_backlog_per_replica=200,
        scale_down_stabilization_seconds=10,
        cooldown_to_zero_seconds=30,
    )
    cluster = FakeCluster(policy, int(rows[0][3]))
    for t, ready, in_flight, before, after, reason in rows:
        assert cluster.replicas == int(before)
        d = cluster.step(Step(float(t), ready=int(ready), in_flight=int(in_flight)))
        assert d.replicas == int(after), (t, d.reason)
        head, _, tail = reason.partition("…")
        assert d.reason.startswith(head), (t, d.reason)
        assert d.reason.endswith(tail), (t, d.reason)


def test_a_paused_queue_holds_its_replicas_whatever_the_backlog() -> None:
    """Paused (issue 13): workers claim nothing, so neither a big backlog nor an empty
    queue moves the pool; the cooldown to zero does not run while paused."""
    policy = replace(BASE, cooldown_to_zero_seconds=60)
    busy = Observation(at=0, waiting_by_priority={"high": 5000}, paused=True)
    d = decide_replicas(busy, policy, History(), 3, now=0)
    assert (d.replicas, d.reason) == (3, "queue paused: holding 3 replicas")
    empty = Observation(at=100, paused=True)
    d = decide_replicas(empty, policy, History(empty_since=0), 3, now=100)
    assert (d.replicas, d.history.empty_since) == (3, None)
    # Resumed: the same backlog scales up again.
    assert decide_replicas(replace(busy, paused=False), policy, History(), 3, now=0).replicas == 10
