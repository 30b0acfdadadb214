"""`kubeq up` without the terminal: a private Redis, the local backend, the autoscaler loop.

The reconcile and scaling code is the operator's own (`QueueAutoscaler`, `decide_replicas`,
the manifests' config); only the backend differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import start_http_server

from kubeq.protocol import AsyncClient, QueueConfig, QueueStats
from kubeq.redis_server import RedisServer
from kubeq_operator.autoscaler import QueueAutoscaler, Tick
from kubeq_operator.backend import QueueRef
from kubeq_operator.errors import InvalidSpec
from kubeq_operator.local_backend import LocalBackend
from kubeq_operator.metrics import OperatorMetrics
from kubeq_operator.scaling import ScalingPolicy
from kubeq_operator.scrape import WorkerSample, delta, merge, quantile, scrape
from kubeq_operator.spec import TaskQueueSpec, parse_spec

log = logging.getLogger(__name__)


def load_manifest(path: Path) -> tuple[QueueRef, TaskQueueSpec]:
    """The TaskQueue in a YAML file (the first one, if it holds several documents)."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidSpec([f"{path}: {exc}"]) from None
    queues = [d for d in docs if isinstance(d, dict) and d.get("kind") == "TaskQueue"]
    if not queues:
        raise InvalidSpec([f"{path}: no TaskQueue in the file"])
    body = queues[0]
    meta = body.get("metadata") or {}
    if not meta.get("name"):
        raise InvalidSpec([f"{path}: metadata.name is required"])
    ref = QueueRef(str(meta.get("namespace") or "default"), str(meta["name"]))
    return ref, parse_spec(body.get("spec"))


@dataclass
class Snapshot:
    """What the live view and the demo show after each tick."""

    at: float
    tick: Tick
    stats: QueueStats | None
    terminating: int
    throughput: float | None  # completed per second over the last window
    wait_p50: float | None
    wait_p99: float | None
    recent: list[tuple[float, str]] = field(default_factory=list)  # scale decisions


class LocalRunner:
    def __init__(
        self,
        manifest: Path,
        *,
        redis_url: str | None = None,
        metrics_port: int = 0,
        log_format: str = "text",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref, self.spec = load_manifest(manifest)
        self.config: QueueConfig = self.spec.to_queue_config(self.ref.name, self.ref.namespace)
        self._given_url = redis_url
        self.metrics_port = metrics_port
        self.log_format = log_format
        self.clock = clock
        self.redis: RedisServer | None = None
        self.run_dir = Path(tempfile.mkdtemp(prefix="kubeq-up-"))
        self.metrics = OperatorMetrics()
        self.decisions: deque[tuple[float, str]] = deque(maxlen=500)
        self._samples: deque[tuple[float, WorkerSample]] = deque(maxlen=64)
        self._gone = WorkerSample()  # counts of workers that have exited, kept for totals
        self._last: dict[str, WorkerSample] = {}
        self._http: Any = None
        self.started = clock()

    @property
    def redis_url(self) -> str:
        if self._given_url:
            return self._given_url
        assert self.redis is not None
        return self.redis.url

    async def start(self) -> None:
        if not self._given_url:
            self.redis = RedisServer(directory=self.run_dir / "redis")
            (self.run_dir / "redis").mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self.redis.start)
        self.client = await AsyncClient.from_url(
            self.redis_url, self.ref.name, self.ref.namespace, self.config
        )
        await self.client.ping()
        await self.client.publish_config()
        self.backend = LocalBackend(self.redis_url, self.run_dir, log_format=self.log_format)
        await self.backend.apply(self.ref, self.spec, self.config)
        policy = ScalingPolicy.from_spec(self.spec)
        self.autoscaler = QueueAutoscaler(
            self.ref, policy, self.client, self.backend, self.metrics, clock=self.clock
        )
        if self.metrics_port >= 0:
            self._http = start_http_server(
                self.metrics_port, addr="127.0.0.1", registry=self.metrics.registry
            )
            self.metrics_port = self._http[0].server_port
        self.started = self.clock()

    async def step(self) -> Snapshot:
        tick = await self.autoscaler.tick()
        now = self.clock()
        if tick.decision.changed:
            self.decisions.append(
                (
                    now - self.started,
                    f"{tick.current} → {tick.decision.replicas}: {tick.decision.reason}",
                )
            )
        throughput, p50, p99 = await asyncio.to_thread(self._worker_view, now)
        return Snapshot(
            now - self.started,
            tick,
            tick.stats,
            self.backend.terminating(self.ref),
            throughput,
            p50,
            p99,
            list(self.decisions),
        )

    async def run(self, stop: asyncio.Event, on_snapshot: Callable[[Snapshot], None]) -> None:
        interval = self.spec.autoscaling.poll_interval_seconds
        while not stop.is_set():
            try:
                on_snapshot(await self.step())
            except Exception:  # the loop must outlive any one bad tick, as the operator does
                self.metrics.reconcile_errors.labels(str(self.ref)).inc()
                log.exception("autoscaler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def shutdown(self) -> bool:
        """Drain every worker (SIGTERM, as Pods get), then stop Redis. True if all drained."""
        await self.backend.scale(self.ref, 0)
        grace = self.spec.worker.termination_grace_period_seconds + 5
        clean = await asyncio.to_thread(self.backend.wait_stopped, grace)
        await self.client.close()
        if self._http is not None:
            self._http[0].shutdown()
        if self.redis is not None:
            await asyncio.to_thread(self.redis.close)
        return clean

    # -- the workers' own metrics, aggregated -------------------------------------------------

    def _worker_view(self, now: float) -> tuple[float | None, float | None, float | None]:
        current = scrape(self.backend.metrics_endpoints())
        for endpoint, sample in self._last.items():
            if endpoint not in current:
                self._gone = merge([self._gone, sample])
        self._last = current
        total = merge([self._gone, *current.values()])
        self._samples.append((now, total))
        window = [s for s in self._samples if s[0] >= now - 10]
        if len(window) < 2:
            return None, None, None
        (t0, first), (t1, last) = window[0], window[-1]
        done = "kubeq_tasks_completed_total"
        throughput = (last.counters.get(done, 0) - first.counters.get(done, 0)) / max(t1 - t0, 1e-9)
        wait = "kubeq_task_queue_wait_seconds"
        recent = delta(last.buckets.get(wait, {}), first.buckets.get(wait, {}))
        return throughput, quantile(0.5, recent), quantile(0.99, recent)
