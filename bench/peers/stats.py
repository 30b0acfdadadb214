"""The pure parts of the peer benchmark: summaries, percentiles, the interleaved schedule,
parsing what the apps report. No I/O here, so a CI test can check them."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    def text(self) -> str:
        return f"{self.median:,.0f} ({self.low:,.0f}-{self.high:,.0f})"


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Median, min and max of the measured values (None = not measured); None if none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    return Summary(statistics.median(xs), min(xs), max(xs), len(xs))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]) of unsorted values; None when empty."""
    if not 0 <= q <= 1:
        raise ValueError(f"percentile q must be within [0, 1], not {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n*q), at least the first
    return ordered[int(rank) - 1]


def schedule(systems: Sequence[str], reps: int) -> list[tuple[int, str]]:
    """Interleaved order: every system once per round, rotated each round, so that slow
    drift of the machine (other jobs, thermal) falls on all systems alike."""
    if reps < 1:
        raise ValueError("reps must be at least 1")
    out: list[tuple[int, str]] = []
    for rep in range(reps):
        k = rep % len(systems) if systems else 0
        out += [(rep, s) for s in [*systems[k:], *systems[:k]]]
    return out


def last_json(stdout: str) -> dict[str, Any]:
    """The report an app printed: the last line of its output that is a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError(f"no JSON report in the app's output: {stdout[-300:]!r}")


def ratio(a: Summary | None, b: Summary | None) -> float | None:
    """a's median over b's, or None when either is missing."""
    if a is None or b is None or b.median == 0:
        return None
    return a.median / b.median


def redis_cpu_seconds(info: dict[str, Any]) -> float:
    """used_cpu_sys + used_cpu_user from INFO cpu."""
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
