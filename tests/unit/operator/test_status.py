"""Status builders: conditions keep their transition time; ticks become status fields."""

from __future__ import annotations

import datetime

from kubeq.protocol import LevelStats, QueueStats
from kubeq_operator.core import status as st
from kubeq_operator.core.scaling import Decision, Direction, History, Tick
from kubeq_operator.core.spec import Condition


def tick(current: int, replicas: int, *, stats: bool = True, error: str | None = None) -> Tick:
    direction: Direction = "up" if replicas > current else "down" if replicas < current else "none"
    decision = Decision(replicas, f"reason {replicas}", History(), direction, replicas)
    levels = [
        LevelStats(name="high", ready=3, delayed=1, due=2, in_flight=4, oldest_enqueued_at=None),
        LevelStats(name="low", ready=10, delayed=0, due=0, in_flight=0, oldest_enqueued_at=None),
    ]
    queue_stats = QueueStats(queue="q", at=0, levels=levels, dead=7, workers=1, counters={})
    return Tick(decision, current, 1, queue_stats if stats else None, error)


def test_timestamp_is_rfc3339_utc() -> None:
    now = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert st.timestamp(now) == "2025-01-02T03:04:05Z"


def test_transition_time_moves_only_with_the_status() -> None:
    conds = st.set_condition([], "Ready", True, "Reconciled", "ok", generation=1, now="t1")
    conds = st.set_condition(conds, "Ready", True, "Reconciled", "still", generation=2, now="t2")
    (ready,) = conds
    assert (ready.last_transition_time, ready.message, ready.observed_generation) == (
        "t1",
        "still",
        2,
    )
    conds = st.set_condition(conds, "Ready", False, "InvalidSpec", "bad", generation=3, now="t3")
    assert conds[0].status == "False"
    assert conds[0].last_transition_time == "t3"


def test_conditions_in_a_fixed_order_and_clipped() -> None:
    conds = st.set_condition([], "Scaling", True, "Stable", "x" * 40000, generation=None, now="t")
    conds = st.set_condition(conds, "Ready", True, "Reconciled", "", generation=None, now="t")
    conds = st.set_condition(
        conds, "RedisReachable", True, "Connected", "", generation=None, now="t"
    )
    assert [c.type for c in conds] == ["Ready", "RedisReachable", "Scaling"]
    assert len(conds[2].message or "") == st.MAX_MESSAGE
    dumped = st.dump_conditions(conds)
    assert dumped[0] == {
        "type": "Ready",
        "status": "True",
        "reason": "Reconciled",
        "message": "",
        "lastTransitionTime": "t",
    }


def test_parse_conditions_drops_garbage() -> None:
    raw = [{"type": "Ready", "status": "True"}, {"type": "X", "status": "maybe"}, "junk"]
    assert st.parse_conditions(raw) == [Condition(type="Ready", status="True")]
    assert st.parse_conditions(None) == []


def test_redis_condition_reasons() -> None:
    assert st.redis_condition(None)[:2] == (True, "Connected")
    assert st.redis_condition("Redis at x is unreachable: refused")[:2] == (
        False,
        "ConnectionFailed",
    )
    assert st.redis_condition("Redis at x refused the credentials: WRONGPASS")[1] == (
        "AuthenticationFailed"
    )
    assert st.redis_condition("Secret default/r not found")[1] == "SecretUnavailable"


def test_scaling_condition() -> None:
    assert st.scaling_condition(tick(1, 3), enabled=True)[:2] == (True, "ScaledUp")
    assert st.scaling_condition(tick(3, 1), enabled=True)[:2] == (True, "ScaledDown")
    assert st.scaling_condition(tick(2, 2), enabled=True)[:2] == (True, "Stable")
    assert st.scaling_condition(tick(2, 2, stats=False), enabled=True)[:2] == (
        False,
        "RedisUnreachable",
    )
    assert st.scaling_condition(tick(2, 2), enabled=False)[:2] == (False, "AutoscalingDisabled")


def test_observed_fields() -> None:
    fields = st.observed_fields(tick(1, 3), now="t")
    assert fields == {
        "replicas": 1,
        "desiredReplicas": 3,
        "waiting": 15,  # ready + due
        "inFlight": 4,
        "backlog": 19,  # waiting + in flight
        "deadLetter": 7,
        "waitingByPriority": {"high": 5, "low": 10},
        "backlogByPriority": {"high": 9, "low": 10},
        "paused": False,
        "lastScaleTime": "t",
        "lastScaleReason": "reason 3",
    }
    held = st.observed_fields(tick(2, 2, stats=False), now="t")
    assert held == {"replicas": 1, "desiredReplicas": 2}  # no stale backlog numbers


def test_scale_event_and_change_detection() -> None:
    assert st.scale_event(tick(1, 3)) == ("ScaledUp", "1 → 3: reason 3")
    assert st.scale_event(tick(3, 2)) == ("ScaledDown", "3 → 2: reason 2")
    assert st.scale_event(tick(2, 2)) is None
    assert st.changed(None, {"a": 1})
    assert not st.changed({"a": 1, "b": 2}, {"a": 1})
    assert st.changed({"a": 1}, {"a": 2})
    assert st.invalid_spec_message(["a: x", "b: y"]) == "a: x; b: y"


def test_redis_condition_reasons_for_security_failures() -> None:
    assert st.redis_condition("Redis URL <value hidden> has no scheme such as redis://")[1] == (
        "InvalidURL"
    )
    assert st.redis_condition(
        "Secret ns/x is not labelled kubeq.io/redis-credentials=true: the operator reads only"
    )[1] == ("SecretUnavailable")
    assert st.redis_condition("Redis at redis://u:***@h:1/0 denied this ACL user: NOPERM")[1] == (
        "PermissionDenied"
    )


def cond(type: str, status: str, reason: str, message: str = "m") -> Condition:
    return Condition.model_validate(
        {"type": type, "status": status, "reason": reason, "message": message}
    )


def test_transition_events_warn_on_failure_and_announce_recovery() -> None:
    ok = cond("Ready", "True", "Reconciled", "fine")
    failed = cond("Ready", "False", "ApplyFailed", "422: refused")
    # New and False, or True → False: a Warning with the condition's reason and message.
    assert st.transition_event(None, failed) == ("Warning", "ApplyFailed", "422: refused")
    assert st.transition_event(ok, failed) == ("Warning", "ApplyFailed", "422: refused")
    # Still False, for another reason or with another message: a new Warning.
    missing = cond("Ready", "False", "MissingReference", 'Secret "s" not found')
    assert st.transition_event(failed, missing) == (
        "Warning",
        *("MissingReference",),
        missing.message,
    )
    other = cond("Ready", "False", "ApplyFailed", "500: etcd down")
    assert st.transition_event(failed, other) == ("Warning", "ApplyFailed", "500: etcd down")
    # Unchanged: nothing (a failing retry loop does not flood Events).
    assert st.transition_event(failed, failed) is None
    # Recovery: a Normal Event named after the condition.
    assert st.transition_event(failed, ok) == ("Normal", "Reconciled", "fine")
    scaling = cond("Scaling", "True", "Stable", "2 replicas")
    broken = cond("Scaling", "False", "AutoscalerError", "WRONGTYPE")
    assert st.transition_event(broken, scaling) == ("Normal", "ScalingResumed", "2 replicas")
    # First seen True, or True staying True: nothing to announce.
    assert st.transition_event(None, ok) is None
    assert st.transition_event(ok, cond("Ready", "True", "Reconciled", "other")) is None
    # False by choice is announced as Normal, not as a Warning.
    disabled = cond("Scaling", "False", "AutoscalingDisabled", "spec.replicas 3")
    assert st.transition_event(scaling, disabled) == (
        "Normal",
        "AutoscalingDisabled",
        "spec.replicas 3",
    )


def test_fingerprint_sees_spec_changes_through_views() -> None:
    from collections.abc import Iterator, Mapping

    from kubeq_operator.kube.handlers import fingerprint

    class View(Mapping[str, object]):  # what kopf may hand out instead of a dict
        def __init__(self, src: dict[str, object]) -> None:
            self.src = src

        def __getitem__(self, key: str) -> object:
            return self.src[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self.src)

        def __len__(self) -> int:
            return len(self.src)

    a = {"metadata": {"uid": "u"}, "spec": View({"worker": {"env": [{"name": "A"}]}})}
    b = {"metadata": {"uid": "u"}, "spec": View({"worker": {"env": []}})}
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint({"metadata": {"uid": "u"}, "spec": dict(a["spec"])})
    assert fingerprint(a) != fingerprint({**a, "metadata": {"uid": "other"}})
