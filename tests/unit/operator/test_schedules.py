"""Issue 14: which ticks of a schedule are due, with time a parameter (DST included)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kubeq_operator.core.errors import InvalidSpec
from kubeq_operator.core.schedules import decide, ticks_between
from kubeq_operator.core.spec import Schedule, parse_spec

BERLIN = ZoneInfo("Europe/Berlin")


def ms(*args: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> int:
    return int(datetime(*args, tzinfo=tz, fold=fold).timestamp() * 1000)


def sched(**kw: Any) -> Schedule:
    return Schedule.model_validate({"name": "s", "task": "t", **kw})


def local(t: int) -> str:
    return datetime.fromtimestamp(t / 1000, tz=UTC).astimezone(BERLIN).isoformat()


def test_cron_ticks_between_two_instants_in_a_time_zone() -> None:
    s = sched(cron="0 */6 * * *", timezone="Europe/Berlin")
    got = ticks_between(s, ms(2026, 6, 1, 0, 0), ms(2026, 6, 2, 0, 0))
    assert [local(t) for t in got] == [
        "2026-06-01T06:00:00+02:00",
        "2026-06-01T12:00:00+02:00",
        "2026-06-01T18:00:00+02:00",
        "2026-06-02T00:00:00+02:00",
    ]


def test_a_daily_tick_in_the_skipped_hour_runs_once_at_the_jump() -> None:
    s = sched(cron="30 2 * * *", timezone="Europe/Berlin")  # 02:30 does not exist on 29 March
    got = ticks_between(s, ms(2026, 3, 28, 12, 0), ms(2026, 3, 30, 12, 0))
    assert [local(t) for t in got] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_a_daily_tick_in_the_repeated_hour_runs_once() -> None:
    s = sched(cron="30 2 * * *", timezone="Europe/Berlin")  # 02:30 happens twice on 25 Oct
    got = ticks_between(s, ms(2026, 10, 24, 12, 0), ms(2026, 10, 26, 12, 0))
    assert [local(t) for t in got] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_an_hourly_schedule_keeps_every_real_hour_across_both_changes() -> None:
    s = sched(cron="0 * * * *", timezone="Europe/Berlin")
    spring = ticks_between(s, ms(2026, 3, 29, 0, 30), ms(2026, 3, 29, 4, 30))
    fall = ticks_between(s, ms(2026, 10, 25, 0, 30), ms(2026, 10, 25, 4, 30))
    # One tick per real hour: 00:30-04:30 is 3 real hours in spring, 5 in autumn.
    assert len(spring) == 3
    assert len(fall) == 5
    for got in (spring, fall):
        assert all(b - a == 3_600_000 for a, b in itertools.pairwise(got))


def test_interval_ticks_are_aligned_to_the_epoch() -> None:
    s = sched(interval_seconds=60)
    assert ticks_between(s, 59_999, 180_000) == [60_000, 120_000, 180_000]
    assert ticks_between(s, 60_000, 60_000) == []


def test_a_new_schedule_starts_now_and_fires_its_first_tick_on_time() -> None:
    s = sched(interval_seconds=60)
    first = decide(s, None, 1_000_030_000)
    assert (first.fire, first.skipped, first.checked_until) == (None, 0, 1_000_030_000)
    assert first.next_run == 1_000_080_000
    on_time = decide(s, first.checked_until, 1_000_085_000)
    assert (on_time.fire, on_time.skipped) == (1_000_080_000, 0)
    nothing = decide(s, on_time.checked_until, 1_000_090_000)
    assert (nothing.fire, nothing.skipped) == (None, 0)


def test_missed_ticks_are_skipped_or_run_once_within_the_catch_up_limit() -> None:
    hour = 3_600_000
    now = 1_000 * hour + 10 * 60_000  # ten minutes after the last of 5 missed hourly ticks
    skip = sched(interval_seconds=3600, starting_deadline_seconds=60)
    d = decide(skip, now - 5 * hour, now)
    assert (d.fire, d.skipped) == (None, 5)
    once = sched(interval_seconds=3600, missed_runs="RunOnce", catch_up_limit_seconds=3600)
    d = decide(once, now - 5 * hour, now)
    assert (d.fire, d.skipped) == (1_000 * hour, 4)  # one run, for the latest missed tick
    too_old = sched(interval_seconds=3600, missed_runs="RunOnce", catch_up_limit_seconds=300)
    d = decide(too_old, now - 5 * hour, now)
    assert (d.fire, d.skipped) == (None, 5)


def test_a_suspended_schedule_fires_nothing_and_counts_its_ticks_skipped() -> None:
    s = sched(interval_seconds=60, suspend=True)
    d = decide(s, 0, 180_000)
    assert (d.fire, d.skipped, d.checked_until) == (None, 3, 180_000)


def test_a_scheduler_behind_another_neither_fires_nor_moves_back() -> None:
    s = sched(interval_seconds=60)
    d = decide(s, 200_000, 150_000)
    assert (d.fire, d.skipped, d.checked_until) == (None, 0, 200_000)


def test_a_long_outage_is_looked_at_in_bounded_steps() -> None:
    s = sched(interval_seconds=1)
    d = decide(s, 0, 10_000_000)  # 10,000 ticks due
    assert d.checked_until == 1_000_000  # the first 1,000, then the next round goes on
    assert (d.fire, d.skipped) == (None, 1000)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a", "task": "t"}, "exactly one of cron and intervalSeconds"),
        ({"name": "a", "task": "t", "cron": "* *"}, "invalid cron expression '* *'"),
        ({"name": "a", "task": "t", "cron": "* * * * *", "timezone": "Mars/Base"}, "Mars/Base"),
        ({"name": "a", "task": "t", "intervalSeconds": 5, "priority": "x"}, "'x' is not a level"),
        ({"name": "A", "task": "t", "intervalSeconds": 5}, "schedules[0].name"),
    ],
)
def test_bad_schedules_are_clear_spec_errors(entry: dict[str, Any], message: str) -> None:
    spec = {"redis": {"url": "redis://r"}, "worker": {"image": "i", "app": "m:app"}}
    with pytest.raises(InvalidSpec, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec({**spec, "schedules": [entry]})
    ok = {"name": "a", "task": "t", "intervalSeconds": 5}
    with pytest.raises(InvalidSpec, match="used twice"):
        parse_spec({**spec, "schedules": [ok, ok]})


def test_fired_and_skipped_ticks_are_counted_per_schedule() -> None:
    from kubeq_operator.engine.metrics import OperatorMetrics

    m = OperatorMetrics()
    m.observe_schedules("ns/q", {"a": 1, "b": 0}, {"a": 0, "b": 3})
    m.observe_schedules("ns/q", {"a": 1, "b": 0}, {"a": 2, "b": 0})

    def value(schedule: str, outcome: str) -> float | None:
        return m.registry.get_sample_value(
            "kubeq_schedule_ticks_total",
            {"queue": "ns/q", "schedule": schedule, "outcome": outcome},
        )

    assert (value("a", "fired"), value("a", "skipped")) == (2, 2)
    assert (value("b", "fired"), value("b", "skipped")) == (0, 3)
