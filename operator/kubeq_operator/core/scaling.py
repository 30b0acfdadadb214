"""The autoscaling decision: a pure function from what the queue looks like to a replica count.

Semantics follow the Kubernetes HPA (stabilization windows, bounds) and KEDA (activation,
scale to zero), with two differences that matter for a task queue:

- in-flight tasks count as load, so a pool busy with long tasks is not scaled away;
- the pool goes to zero only after the queue has been *completely* empty (nothing
  waiting, nothing running) for cooldownToZeroSeconds, never because a metric dipped;
- on throughput (targetDrainSeconds), the way down follows the arrival rate measured over
  the scale-down window (`hold_need`) instead of the window's highest recommendation.

Time is a parameter (`now`, in seconds on any monotonic clock); nothing here sleeps or
reads a clock, so the tests drive it with a fake one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

from kubeq.protocol.models import QueueStats
from kubeq_operator.core.spec import TaskQueueSpec

Direction = Literal["up", "down", "none"]


@dataclass(frozen=True)
class Observation:
    """One reading of the queue, taken at `at` (seconds, same clock as `now`)."""

    at: float
    waiting_by_priority: Mapping[str, int] = field(default_factory=dict)  # ready + due
    in_flight: int = 0
    reachable: bool = True
    #: the queue is paused (`kubeq pause`): workers claim nothing, so the pool holds
    paused: bool = False
    # The queue's cumulative counters (kubeq.protocol.QueueStats.counters), for the rates.
    submitted: int | None = None
    claimed: int | None = None

    @property
    def waiting(self) -> int:
        return sum(max(0, n) for n in self.waiting_by_priority.values())

    @property
    def backlog(self) -> int:
        """Tasks that need a worker now: waiting (ready or due) plus in flight."""
        return self.waiting + max(0, self.in_flight)


@dataclass(frozen=True)
class ScalingPolicy:
    """spec.autoscaling, plus what the decision needs when autoscaling is off."""

    min_replicas: int = 0
    max_replicas: int = 10
    target_backlog_per_replica: int = 100
    activation_backlog: int = 0
    scale_up_stabilization_seconds: float = 0
    scale_down_stabilization_seconds: float = 300
    cooldown_to_zero_seconds: float = 300
    max_step_up: int | None = None
    max_step_down: int | None = None
    fallback_replicas: int | None = None
    poll_interval_seconds: float = 10
    enabled: bool = True
    static_replicas: int = 1
    # Task slots per worker: running tasks need at least ceil(in_flight / concurrency)
    # workers, whatever the target says (a target above the concurrency would otherwise
    # scale a busy pool below what it is running). None: no such floor.
    concurrency: int | None = None
    # With it: scale on throughput (see `throughput_need`) once the rates are measured.
    target_drain_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self}")
        if self.target_backlog_per_replica < 1:
            raise ValueError("target_backlog_per_replica must be >= 1")
        for step in (self.max_step_up, self.max_step_down):
            if step is not None and step < 1:
                raise ValueError("max steps must be >= 1")

    @classmethod
    def from_spec(cls, spec: TaskQueueSpec) -> ScalingPolicy:
        a = spec.autoscaling
        return cls(
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            target_backlog_per_replica=a.target_backlog_per_replica,
            activation_backlog=a.activation_backlog,
            scale_up_stabilization_seconds=a.scale_up_stabilization_seconds,
            scale_down_stabilization_seconds=a.scale_down_stabilization_seconds,
            cooldown_to_zero_seconds=a.cooldown_to_zero_seconds,
            max_step_up=a.max_step_up,
            max_step_down=a.max_step_down,
            fallback_replicas=a.fallback_replicas,
            poll_interval_seconds=a.poll_interval_seconds,
            enabled=a.enabled,
            static_replicas=spec.static_replicas,
            concurrency=spec.worker.concurrency,
            target_drain_seconds=a.target_drain_seconds,
        )

    @property
    def window_seconds(self) -> float:
        """How much recommendation history the decision can look at."""
        return max(self.scale_up_stabilization_seconds, self.scale_down_stabilization_seconds)

    @property
    def rate_window_seconds(self) -> float:
        """How far back arrival and claim rates are measured: short, so a burst shows
        at once (the scale-down window smooths the noise on the way down)."""
        return max(5.0, 2.5 * self.poll_interval_seconds)

    @property
    def counts_window_seconds(self) -> float:
        """How long counter readings are kept: the rate window, and the scale-down window
        whose mean arrival rate decides when a worker may go (see `hold_need`)."""
        return max(self.rate_window_seconds, self.scale_down_stabilization_seconds)

    @property
    def stale_after_seconds(self) -> float:
        """A reading older than this is no reading: act as if Redis were unreachable."""
        return max(3 * self.poll_interval_seconds, 5.0)

    def clamp(self, replicas: int) -> int:
        return min(self.max_replicas, max(self.min_replicas, replicas))


@dataclass(frozen=True)
class History:
    """What past decisions the next one needs, bounded in time and size.

    `recommendations` holds (time, replicas) pairs, oldest first. A run of equal values is
    kept as its latest entry only: "was v recommended within the window" has the same
    answer either way, so the history grows with changes, not with polls.
    """

    MAX_ENTRIES: ClassVar[int] = 1024

    recommendations: tuple[tuple[float, int], ...] = ()
    empty_since: float | None = None  # since when the queue has been seen completely empty
    last_scale_at: float | None = None
    last_scale_up_at: float | None = None
    # (time, submitted, claimed, in flight) readings, oldest first, kept for the longer of
    # the rate window and the scale-down window (ScalingPolicy.counts_window_seconds).
    counts: tuple[tuple[float, int, int, int], ...] = ()

    def count(self, obs: Observation, window: float) -> History:
        if obs.submitted is None or obs.claimed is None:
            return replace(self, counts=())
        entry = (obs.at, obs.submitted, obs.claimed, max(0, obs.in_flight))
        kept = [e for e in self.counts if obs.at - window <= e[0] < obs.at]
        # A counter that went back (Redis flushed, restored): the old readings mean nothing.
        if kept and (kept[-1][1] > entry[1] or kept[-1][2] > entry[2]):
            kept = []
        return replace(self, counts=(*kept[-(self.MAX_ENTRIES - 1) :], entry))

    def record(self, now: float, replicas: int, window: float) -> History:
        entries = [e for e in self.recommendations if e[0] >= now - window]
        if entries and entries[-1][1] == replicas:
            entries.pop()
        entries.append((now, replicas))
        return replace(self, recommendations=tuple(entries[-self.MAX_ENTRIES :]))

    def values_within(self, now: float, window: float) -> list[int]:
        return [r for at, r in self.recommendations if at >= now - window]


@dataclass(frozen=True)
class Rates:
    """What the counters say over the rate window: arrivals per second, claims per second
    and the mean number of tasks in flight."""

    seconds: float
    arrivals: float
    claims: float
    in_flight: float
    #: how many intervals between readings the rates rest on
    intervals: int = 1

    @property
    def service_seconds(self) -> float | None:
        """Mean time a task holds a worker slot, by Little's law (L = λ·W: tasks in
        flight = claim rate * time in flight); None until a claim was seen."""
        return self.in_flight / self.claims if self.claims > 0 else None


def measured_rates(history: History, window: float | None = None) -> Rates | None:
    """Rates over the readings in `history` (those of the last `window` seconds before
    the newest one, if given); None with fewer than two of them."""
    counts = history.counts
    if window is not None and counts:
        newest = counts[-1][0]
        counts = tuple(e for e in counts if e[0] >= newest - window)
    if len(counts) < 2:
        return None
    (t0, s0, c0, _), (t1, s1, c1, _) = counts[0], counts[-1]
    span = t1 - t0
    if span <= 0:
        return None
    # Mean in flight over the window (trapezoids: readings need not be evenly spaced).
    pairs = itertools.pairwise(counts)
    area = sum((b[0] - a[0]) * (a[3] + b[3]) / 2 for a, b in pairs)
    return Rates(span, (s1 - s0) / span, (c1 - c0) / span, area / span, len(counts) - 1)


def throughput_need(
    rates: Rates,
    waiting: int,
    concurrency: int,
    drain_seconds: float,
    service: float | None = None,
) -> tuple[float, str] | None:
    """Workers needed to keep up with arrivals *and* drain what waits within
    `drain_seconds`, from the measured capacity of one worker; None when the capacity is
    not measured yet (nothing claimed in the window).

    One worker serves `concurrency` tasks at a time for `service_seconds` each, so it
    completes concurrency / service_seconds tasks per second. Needed: (arrival rate +
    waiting / drain_seconds) / that. `service` (seconds per task) replaces the one
    measured by `rates` when given.
    """
    wanted = rates.arrivals + max(0, waiting) / drain_seconds
    if wanted <= 0:  # nothing to serve needs no worker, whatever one could serve
        return 0.0, "no arrivals and nothing waiting → 0"
    service = service or rates.service_seconds
    if service is None or service <= 0:
        return None
    per_worker = concurrency / service
    need = wanted / per_worker
    why = (
        f"arrivals {rates.arrivals:.1f}/s + waiting {waiting} / drain {drain_seconds:g} s"
        f" = {wanted:.1f}/s at {per_worker:.1f}/s per worker ({service:.2f} s per task"
        f" x {concurrency}) → {math.ceil(need - 1e-9)}"
    )
    return need, why


def hold_need(
    window_rates: Rates,
    waiting: int,
    concurrency: int,
    drain_seconds: float,
    service: float | None = None,
) -> tuple[int, str] | None:
    """Workers a throughput-scaled pool keeps on the way down: what the *mean* arrival
    rate over the scale-down window needs, plus draining what waits now, at the capacity
    measured over that window. None without a measured capacity.

    This is the scale-down stabilization of a throughput-scaled pool. The HPA holds the
    highest recommendation of the window, which keeps a burst's peak (and a drained
    backlog's workers) for the whole window; the window's arrival rate keeps what a
    returning burst would need, and lets go as the burst ages out of it. Waiting tasks
    and running ones are counted as they are now: neither is a forecast (running tasks
    keep their workers through the in-flight floor and idle-first removal).
    """
    service = service or window_rates.service_seconds
    need = throughput_need(window_rates, waiting, concurrency, drain_seconds, service)
    if need is None:
        return None
    per_worker = f" at {concurrency / service:.1f}/s per worker" if service else ""
    return math.ceil(need[0] - 1e-9), (
        f"{window_rates.arrivals:.1f}/s + waiting {waiting} / drain {drain_seconds:g} s"
        + per_worker
    )


def _service(*rates: Rates | None) -> float | None:
    """The first measured time per task (> 0) among `rates`: the short window's while it
    saw claims, else the longer window's (a quiet moment keeps the capacity it knew)."""
    for r in rates:
        s = r.service_seconds if r is not None else None
        if s is not None and s > 0:
            return s
    return None


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # one human sentence, for status.lastScaleReason, Events and logs
    history: History
    direction: Direction
    recommendation: int | None = None  # before stabilization and step caps; None without data

    @property
    def changed(self) -> bool:
        return self.direction != "none"


@dataclass(frozen=True)
class Tick:
    """What one autoscaler round saw and decided (engine/autoscaler.py runs the round)."""

    decision: Decision
    current: int  # desired replicas before this tick
    ready: int
    stats: QueueStats | None  # None when Redis could not be read
    error: str | None = None


def _direction(current: int, target: int) -> Direction:
    return "up" if target > current else "down" if target < current else "none"


def _finish(
    target: int, current: int, reason: str, history: History, now: float, rec: int | None = None
) -> Decision:
    if target != current:
        history = replace(history, last_scale_at=now)
    if target > current:
        history = replace(history, last_scale_up_at=now)
    return Decision(target, reason, history, _direction(current, target), rec)


def keep_busy(decision: Decision, current: int, busy: int, before: History) -> Decision:
    """A scale-down that removes only idle workers: never below the `busy` workers (those
    reporting tasks in flight). A removed worker drains, but a task longer than its grace
    period would be interrupted and run again; an idle one loses nothing. The pods go
    idle-first (deletion costs), so the count is all that needs guarding. `before` is the
    history the decision started from (its scale time stays if nothing changes now)."""
    if decision.direction != "down" or decision.replicas >= busy:
        return decision
    target = min(current, busy)
    reason = f"{decision.reason}, kept at {target}: {busy} workers busy (only idle ones go)"
    direction = _direction(current, target)
    history = decision.history
    if direction == "none":
        history = replace(
            history, last_scale_at=before.last_scale_at, last_scale_up_at=before.last_scale_up_at
        )
    return replace(decision, replicas=target, reason=reason, history=history, direction=direction)


def decide_replicas(
    observation: Observation,
    policy: ScalingPolicy,
    history: History,
    current_replicas: int,
    now: float,
) -> Decision:
    """How many workers to run now, why, and the history to pass to the next call."""
    current = max(0, current_replicas)
    if not policy.enabled:
        n = policy.static_replicas
        return _finish(n, current, f"autoscaling disabled: spec.replicas {n}", history, now)

    age = now - observation.at
    if not observation.reachable or age > policy.stale_after_seconds:
        why = "Redis unreachable" if not observation.reachable else f"reading {age:.0f} s old"
        if policy.fallback_replicas is not None:
            wanted, reason = policy.fallback_replicas, f"{why}: fallbackReplicas {{n}}"
        else:
            wanted, reason = current, f"{why}: holding {{n}} replicas"
        target = policy.clamp(wanted)
        reason = reason.format(n=target) + (f" (clamped from {wanted})" if target != wanted else "")
        # Unknown is not empty: the cooldown to zero starts again once the queue is seen.
        return _finish(target, current, reason, replace(history, empty_since=None), now)

    if observation.paused:
        # A paused queue's backlog says nothing about the workers it needs: hold, so a
        # resume finds the pool as it was; and never start the cooldown to zero.
        target = policy.clamp(current)
        reason = f"queue paused: holding {target} replicas"
        return _finish(target, current, reason, replace(history, empty_since=None), now)

    waiting, in_flight, demand = (
        observation.waiting,
        max(0, observation.in_flight),
        observation.backlog,
    )
    empty_since = None
    if demand == 0:
        empty_since = history.empty_since if history.empty_since is not None else observation.at
    history = history.count(observation, policy.counts_window_seconds)
    rates = measured_rates(history, policy.rate_window_seconds)
    need, hold = None, None
    drain, concurrency = policy.target_drain_seconds, policy.concurrency
    if drain is not None and concurrency and rates is not None:
        window_rates = measured_rates(history, policy.scale_down_stabilization_seconds)
        service = _service(rates, window_rates)
        need = throughput_need(rates, waiting, concurrency, drain, service)
        if need is not None and window_rates is not None:
            hold = hold_need(window_rates, waiting, concurrency, drain, _service(window_rates))
    by_backlog = math.ceil(demand / policy.target_backlog_per_replica)
    backlog_note = (
        f"backlog {demand} (waiting {waiting} + in-flight {in_flight})"
        f" / target {policy.target_backlog_per_replica} → {by_backlog}"
    )
    if need is not None:
        raw = math.ceil(need[0] - 1e-9)  # float noise must not add a worker
        notes = [need[1]]
        if rates is not None and rates.intervals < 2 and by_backlog > raw:
            # A cold start (or counters reset): the only interval measured began before
            # the pool filled, so it saw tasks claimed that have not run their length yet,
            # and one worker's capacity looks larger than it is (the first workers then
            # fall behind). Until a second interval is measured, the backlog rule is
            # the floor.
            raw = by_backlog
            notes.append(f"one interval measured so far: at least the {backlog_note}")
    else:
        raw = by_backlog
        notes = [backlog_note]
    busy = math.ceil(in_flight / policy.concurrency) if policy.concurrency else 0
    if need is not None:
        # On throughput the floor only keeps running tasks' workers; it never adds any: a
        # reading above the pool's slots is acknowledgements in flight (settled in
        # batches), not work that needs another worker. The need is what scales up.
        busy = min(busy, current)
    if busy > raw:
        notes.append(f"{in_flight} running need {busy} at concurrency {policy.concurrency}")
        raw = busy
    # The recommendation while the pool is active: never below 1, zero is decided apart.
    rec = min(policy.max_replicas, max(policy.min_replicas, 1, raw))
    if rec < raw:
        notes.append(f"capped at max {policy.max_replicas}")
    elif rec > raw and policy.min_replicas > raw:
        notes.append(f"raised to min {policy.min_replicas}")
    history = replace(history.record(now, rec, policy.window_seconds), empty_since=empty_since)

    if current == 0 and policy.min_replicas == 0 and demand <= policy.activation_backlog:
        notes.append(f"not above activation backlog {policy.activation_backlog}: staying at 0")
        return _finish(0, current, ", ".join(notes), history, now, 0)

    # Stabilization as the HPA does it: up to the lowest recommendation of the up window,
    # down to the highest of the down window, otherwise stay. On throughput, down to what
    # the window's arrival rate needs instead (`hold_need`), never below the need of now.
    up = min(history.values_within(now, policy.scale_up_stabilization_seconds))
    up_window = f"scale-up stabilization ({policy.scale_up_stabilization_seconds:g} s)"
    window = f"({policy.scale_down_stabilization_seconds:g} s)"
    if hold is not None:
        down = max(rec, policy.clamp(max(hold[0], busy, 1)))
        down_window = f"the arrivals over the scale-down window {window}: {hold[1]}"
        # No scale-down within a rate window of a scale-up: a worker just started has not
        # registered and reported what it runs yet (idle-first could not tell), and the
        # rates that asked for it are still being measured.
        up_at = history.last_scale_up_at
        if up_at is not None and now - up_at < policy.rate_window_seconds and down < current:
            down = current
            down_window = (
                f"a scale-up {now - up_at:.0f} s ago (within the rate window,"
                f" {policy.rate_window_seconds:g} s)"
            )
    else:
        down = max(history.values_within(now, policy.scale_down_stabilization_seconds))
        down_window = f"scale-down stabilization {window}"
    if up > current:
        target = up
        if up < rec:
            notes.append(f"held at {up} by {up_window}")
    elif down < current:
        target = down
        if down > rec:
            notes.append(f"held at {down} by {down_window}")
    else:
        target = current
        if rec != current:
            notes.append(f"held at {current} by {up_window if rec > current else down_window}")

    if policy.min_replicas == 0 and empty_since is not None:
        idle = now - empty_since
        if idle >= policy.cooldown_to_zero_seconds:
            target = 0
            notes.append(
                f"empty for {idle:.0f} s ≥ cooldown {policy.cooldown_to_zero_seconds:g} s → 0"
            )
        elif current > 0:
            notes.append(f"empty for {idle:.0f} s < cooldown {policy.cooldown_to_zero_seconds:g} s")

    if policy.max_step_up is not None and target - current > policy.max_step_up:
        target = current + policy.max_step_up
        notes.append(f"step limited to +{policy.max_step_up}")
    if policy.max_step_down is not None and current - target > policy.max_step_down:
        target = current - policy.max_step_down
        notes.append(f"step limited to -{policy.max_step_down}")

    # Bounds win over everything (e.g. right after maxReplicas was lowered).
    bounded = policy.clamp(target)
    if bounded != target:
        notes.append(f"bounded to [{policy.min_replicas}, {policy.max_replicas}]")
    return _finish(bounded, current, ", ".join(notes), history, now, rec)
