"""Reading the workers' /metrics for the local live view: counters and histogram quantiles.

Prometheus would do this in a cluster; `kubeq up` has no Prometheus, so it scrapes its
worker processes itself. Parsing and the quantile estimate are pure functions.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class WorkerSample:
    """The sums over one scrape of one worker."""

    counters: dict[str, float] = field(default_factory=dict)  # metric name → sum over labels
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # histogram → le → n


def parse(text: str) -> WorkerSample:
    sample = WorkerSample()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_total"):
                sample.counters[s.name] = sample.counters.get(s.name, 0.0) + s.value
            elif s.name.endswith("_bucket"):
                hist = sample.buckets.setdefault(s.name.removesuffix("_bucket"), {})
                le = float(s.labels["le"])
                hist[le] = hist.get(le, 0.0) + s.value
    return sample


def merge(samples: Iterable[WorkerSample]) -> WorkerSample:
    total = WorkerSample()
    for s in samples:
        for k, v in s.counters.items():
            total.counters[k] = total.counters.get(k, 0.0) + v
        for name, hist in s.buckets.items():
            into = total.buckets.setdefault(name, {})
            for le, n in hist.items():
                into[le] = into.get(le, 0.0) + n
    return total


def delta(now: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    """Bucket counts gained between two scrapes (a worker that restarted counts from 0)."""
    return {le: max(0.0, n - before.get(le, 0.0)) for le, n in now.items()}


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """histogram_quantile() as Prometheus computes it: linear within the bucket."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower_bound  # the highest finite bucket bound, as Prometheus does
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound


def scrape(endpoints: list[str], timeout: float = 1.0) -> dict[str, WorkerSample]:
    """Scrape every endpoint concurrently; unreachable ones are left out."""

    def one(endpoint: str) -> tuple[str, WorkerSample | None]:
        try:
            with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=timeout) as resp:
                return endpoint, parse(resp.read().decode())
        except (OSError, ValueError):
            return endpoint, None

    if not endpoints:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
        return {e: s for e, s in pool.map(one, endpoints) if s is not None}
