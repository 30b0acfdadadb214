"""`kubeq up` without the terminal: a private Redis, the local backend, the autoscaler loop.

The reconcile and scaling code is the operator's own (`QueueAutoscaler`, `decide_replicas`,
the manifests' config); only the backend differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import start_http_server

from kubeq.cli.envfile import write_env_file
from kubeq.protocol import AsyncClient, QueueConfig, QueueStats
from kubeq.protocol.connection import redacted
from kubeq.redis_server import RedisServer, RedisServerError
from kubeq_operator.core.errors import InvalidSpec
from kubeq_operator.core.scaling import ScalingPolicy, Tick
from kubeq_operator.core.spec import ScheduleStatus, TaskQueueSpec, parse_spec
from kubeq_operator.engine.autoscaler import QueueAutoscaler
from kubeq_operator.engine.backend import QueueRef
from kubeq_operator.engine.metrics import OperatorMetrics
from kubeq_operator.engine.scheduler import run_schedules
from kubeq_operator.local.backend import CrashInfo, LocalBackend, WorkerFates
from kubeq_operator.local.scrape import WorkerSample, delta, merge, quantile, scrape
from kubeq_operator.local.state_dir import StateDir, StateDirError

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
    crashes: CrashInfo = field(default_factory=lambda: CrashInfo(0, None))
    #: tasks submitted per second over the last window (Redis's `submitted` counter)
    submit_rate: float | None = None


WINDOW_SECONDS = 10.0


def rate_over(samples: Sequence[tuple[float, int]], now: float, window: float) -> float | None:
    """Per-second increase of a counter over the samples (time, total) of the last `window`
    seconds; None with fewer than two. A total that went down (the counter started over)
    counts from its new value, as Prometheus's rate() does."""
    recent = [s for s in samples if s[0] >= now - window]
    if len(recent) < 2:
        return None
    added = sum(b - a if b >= a else b for (_, a), (_, b) in itertools.pairwise(recent))
    return added / max(recent[-1][0] - recent[0][0], 1e-9)


class UpError(Exception):
    """`kubeq up` cannot start; the message says why. Nothing it started is left running."""


@dataclass
class StopReport:
    """How `kubeq up` ended: the workers' fates and the tasks left behind."""

    workers: WorkerFates
    crashes: CrashInfo
    remaining: QueueStats | None  # None: Redis could not be read
    kept_in: str | None  # where the remaining tasks are kept; None: discarded with Redis


class LocalRunner:
    def __init__(
        self,
        manifest: Path,
        *,
        redis_url: str | None = None,
        metrics_port: int = 0,
        state_dir: Path | None = None,
        redis_port: int | None = None,
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
        # With a state directory Redis keeps its data (AOF) there between runs; without
        # one (the demo, benchmarks, tests) everything lives in a temporary directory
        # removed at shutdown.
        self.state = StateDir(state_dir) if state_dir is not None else None
        self._redis_port = redis_port
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.run_dir = Path()
        self.metrics = OperatorMetrics()
        self.decisions: deque[tuple[float, str]] = deque(maxlen=500)
        self.schedules: list[ScheduleStatus] = []  # where each schedule stands, last round
        self._samples: deque[tuple[float, WorkerSample]] = deque(maxlen=64)
        self._submitted: deque[tuple[float, int]] = deque(maxlen=64)
        self._gone = WorkerSample()  # counts of workers that have exited, kept for totals
        self._last: dict[str, WorkerSample] = {}
        self._http: Any = None
        self._client: AsyncClient | None = None
        self._backend: LocalBackend | None = None
        self.started = clock()

    @property
    def redis_url(self) -> str:
        if self._given_url:
            return self._given_url
        assert self.redis is not None
        return self.redis.url

    @property
    def client(self) -> AsyncClient:
        assert self._client is not None, "start() first"
        return self._client

    @property
    def backend(self) -> LocalBackend:
        assert self._backend is not None, "start() first"
        return self._backend

    @property
    def logs_dir(self) -> Path:
        return self.state.logs_dir if self.state is not None else self.run_dir

    async def start(self) -> None:
        """Start everything; on any failure stop what was started, then raise."""
        try:
            await self._start()
        except BaseException:
            await self.shutdown()
            raise

    async def _start(self) -> None:
        if self.state is not None:
            try:
                self.state.acquire()
            except StateDirError as exc:
                raise UpError(str(exc)) from None
            self.run_dir = self.state.fresh_logs()
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="kubeq-up-")
            self.run_dir = Path(self._tmp.name)
        # The metrics port first: a busy port fails before any process is started.
        if self.metrics_port >= 0:
            try:
                self._http = start_http_server(
                    self.metrics_port, addr="127.0.0.1", registry=self.metrics.registry
                )
            except OSError as exc:
                raise UpError(
                    f"cannot serve the operator's metrics on 127.0.0.1:{self.metrics_port}: "
                    f"{exc.strerror or exc}; pass --metrics-port with a free port "
                    "(0: any free port, -1: off)"
                ) from None
            self.metrics_port = self._http[0].server_port
        if not self._given_url:
            # In this (the main) thread: the server's parent-death signal is tied to the
            # thread that starts it, and this one lives as long as `kubeq up`.
            self._start_redis()
        self._client = await AsyncClient.from_url(
            self.redis_url, self.ref.name, self.ref.namespace, self.config
        )
        await self.client.ping()
        await self.client.publish_config()
        if self.state is not None:
            write_env_file(
                self.state.env_file,
                {
                    "KUBEQ_REDIS_URL": self.redis_url,
                    "KUBEQ_QUEUE": self.ref.name,
                    "KUBEQ_NAMESPACE": self.ref.namespace,
                },
            )
        self._backend = LocalBackend(self.redis_url, self.run_dir, log_format=self.log_format)
        await self.backend.apply(self.ref, self.spec, self.config)
        policy = ScalingPolicy.from_spec(self.spec)
        self.autoscaler = QueueAutoscaler(
            self.ref, policy, self.client, self.backend, self.metrics, clock=self.clock
        )
        self.started = self.clock()

    def _start_redis(self) -> None:
        if self.state is not None:
            try:
                port = self.state.redis_port(self._redis_port)
            except StateDirError as exc:
                raise UpError(str(exc)) from None
            self.state.redis_dir.mkdir(parents=True, exist_ok=True)
            server = RedisServer(
                port=port,
                directory=self.state.redis_dir,
                appendonly=True,
                appendfsync="everysec",
                owned=True,
            )
        else:
            (self.run_dir / "redis").mkdir(parents=True, exist_ok=True)
            server = RedisServer(
                port=self._redis_port, directory=self.run_dir / "redis", owned=True
            )
        self.redis = server
        try:
            server.start()
        except RedisServerError as exc:
            raise UpError(f"the private redis-server did not start: {exc}") from None

    async def step(self) -> Snapshot:
        tick = await self.autoscaler.tick()
        if self.spec.schedules and not tick.error:
            done = await run_schedules(self.client, self.spec.schedules)
            self.metrics.observe_schedules(str(self.ref), done.fired, done.skipped)
            self.schedules = done.statuses
        now = self.clock()
        if tick.decision.changed:
            self.decisions.append(
                (
                    now - self.started,
                    f"{tick.current} → {tick.decision.replicas}: {tick.decision.reason}",
                )
            )
        throughput, p50, p99 = await asyncio.to_thread(self._worker_view, now)
        if tick.stats is not None:
            self._submitted.append((now, tick.stats.counters.get("submitted", 0)))
        return Snapshot(
            now - self.started,
            tick,
            tick.stats,
            self.backend.terminating(self.ref),
            throughput,
            p50,
            p99,
            list(self.decisions),
            self.backend.crashes(self.ref),
            rate_over(self._submitted, now, WINDOW_SECONDS),
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

    def kill_workers(self) -> None:
        """SIGKILL every worker now (a second Ctrl-C: stop waiting for the drain)."""
        if self._backend is not None:
            self._backend.kill_all()

    async def shutdown(self) -> StopReport:
        """Drain every worker (SIGTERM, as Pods get), count what is left, stop Redis.

        Safe to call after a partial start and more than once: it stops whatever runs."""
        fates = WorkerFates()
        crashes = CrashInfo(0, None)
        remaining: QueueStats | None = None
        try:
            if self._backend is not None:
                mark = self.backend.ended_count()
                await self.backend.scale(self.ref, 0)
                grace = self.spec.worker.termination_grace_period_seconds + 5
                await asyncio.to_thread(self.backend.wait_stopped, grace)
                fates = self.backend.fates(since=mark)
                crashes = self.backend.crashes(self.ref)
            if self._client is not None:
                with contextlib.suppress(Exception):  # Redis may be what failed
                    remaining = await self._client.stats()
                await self._client.close()
                self._client = None
        finally:
            if self._http is not None:
                self._http[0].shutdown()
                self._http[0].server_close()
                self._http = None
            if self.redis is not None:
                await asyncio.to_thread(self.redis.close)
                self.redis = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
            if self.state is not None:
                self.state.release()
        if self._given_url:
            kept_in: str | None = redacted(self._given_url)
        elif self.state is not None:
            kept_in = f"{self.state.redis_dir} (the next `kubeq up` with this state directory "
            kept_in += "resumes them)"
        else:
            kept_in = None
        return StopReport(fates, crashes, remaining, kept_in)

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
