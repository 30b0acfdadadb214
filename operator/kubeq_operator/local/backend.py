"""The local backend: worker *processes* instead of Pods, for `kubeq up` and the demo.

It behaves as a Deployment's ReplicaSet would: it keeps the desired number of workers
running (a crashed one is replaced, with a growing back-off as the kubelet's
CrashLoopBackOff, and the last line it logged kept as the reason), removes the lowest
deletion cost first when scaling down, stops a worker with SIGTERM and kills it only
after its termination grace period, and rolls the pool over when the spec changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGTERM

from kubeq.protocol import QueueConfig
from kubeq.redis_server import die_with_parent, free_port
from kubeq_operator.core.manifests import config_hash, queue_config_json, worker_grace_seconds
from kubeq_operator.core.spec import TaskQueueSpec
from kubeq_operator.engine.backend import PoolView, QueueRef

log = logging.getLogger(__name__)


BACKOFF_FIRST = 1.0  # seconds before restarting a worker that crashed once
BACKOFF_MAX = 60.0
STABLE_AFTER = 30.0  # a worker that ran this long before crashing resets the back-off


def crash_backoff(consecutive: int) -> float:
    """Seconds to wait before the next start after `consecutive` crashes in a row."""
    if consecutive <= 0:
        return 0.0
    return min(BACKOFF_FIRST * 2.0 ** (consecutive - 1), BACKOFF_MAX)


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.,]+\s+")


def reason_of(line: str) -> str:
    """A log line as a reason: a JSON log's message, or a text line without its time."""
    if line.startswith("{"):
        with contextlib.suppress(ValueError, TypeError):
            record = json.loads(line)
            if isinstance(record, dict) and "message" in record:
                level = record.get("level") or record.get("levelname")
                return f"{level} {record['message']}" if level else str(record["message"])
    return _TIMESTAMP.sub("", line)


def last_line(log: Path, max_bytes: int = 8192, width: int = 300) -> str | None:
    """What a crashed worker said last: its log's last non-blank line, as a reason."""
    try:
        with log.open("rb") as f:
            f.seek(max(log.stat().st_size - max_bytes, 0))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return reason_of(lines[-1])[:width] if lines else None


@dataclass(frozen=True)
class CrashInfo:
    """Workers of a pool that exited without being asked to, and the last one's reason."""

    count: int
    last_error: str | None
    restart_in: float = 0.0  # seconds until the back-off lets the next one start


@dataclass(frozen=True)
class Ended:
    """A worker that was asked to stop and has exited."""

    name: str
    returncode: int
    killed: str | None  # "grace": killed after its grace period; "forced": on request


@dataclass(frozen=True)
class WorkerFates:
    """How the workers asked to stop ended."""

    ended: tuple[Ended, ...] = ()
    grace_seconds: int = 0

    @property
    def drained(self) -> int:
        return sum(1 for e in self.ended if e.killed is None and e.returncode == 0)

    def summary(self) -> str:
        """One truthful sentence: drained, killed after the grace period, forced, failed."""
        if not self.ended:
            return "stopped: no worker was running"
        parts = []
        if self.drained:
            parts.append(f"{self.drained} worker(s) drained")
        grace = sum(1 for e in self.ended if e.killed == "grace")
        if grace:
            parts.append(
                f"{grace} killed after the {self.grace_seconds} s grace period (their "
                "unfinished tasks return to the queue when their leases expire)"
            )
        forced = sum(1 for e in self.ended if e.killed == "forced")
        if forced:
            parts.append(
                f"{forced} killed without waiting (second Ctrl-C; their unfinished tasks "
                "return to the queue when their leases expire)"
            )
        # SIGTERM's default action: the worker was still starting (its handler not yet
        # installed), so it held no task.
        starting = sum(1 for e in self.ended if e.killed is None and e.returncode == -SIGTERM)
        if starting:
            parts.append(f"{starting} stopped while still starting (no task taken)")
        failed = [e for e in self.ended if e.killed is None and e.returncode not in (0, -SIGTERM)]
        if failed:
            codes = ", ".join(f"{e.name} {e.returncode}" for e in failed)
            parts.append(f"{len(failed)} exited with an error while draining ({codes})")
        return "stopped: " + "; ".join(parts)


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    template: str
    started: float
    log: Path
    stop_deadline: float | None = None  # set once SIGTERM was sent
    killed: str | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, why: str) -> None:
        if self.alive:
            self.killed = why
            self.process.kill()


@dataclass
class _Pool:
    spec: TaskQueueSpec
    config: QueueConfig
    template: str
    desired: int = 0
    workers: list[WorkerProcess] = field(default_factory=list)
    costs: dict[str, int] = field(default_factory=dict)
    serial: int = 0
    crashes: int = 0
    consecutive_crashes: int = 0
    last_error: str | None = None
    next_start: float = 0.0  # monotonic time before which no replacement starts
    ended: list[Ended] = field(default_factory=list)
    decisions: int = 0  # scale decisions applied: the basis of the next one


class LocalBackend:
    def __init__(
        self,
        redis_url: str,
        run_dir: Path,
        *,
        log_format: str = "text",
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.redis_url = redis_url
        self.run_dir = run_dir
        self.log_format = log_format
        self.python = python
        self.extra_env = extra_env or {}
        self.pools: dict[QueueRef, _Pool] = {}

    # -- Backend interface ---------------------------------------------------------------

    async def apply(self, ref: QueueRef, spec: TaskQueueSpec, config: QueueConfig) -> None:
        template = config_hash(config) + f"/{spec.worker.app}/{spec.worker.concurrency}"
        pool = self.pools.get(ref)
        if pool is None:
            self.pools[ref] = _Pool(spec, config, template)
            return
        if pool.template != template:
            log.info("%s: spec changed, rolling the workers over", ref)
            pool.spec, pool.config, pool.template = spec, config, template
            # Like a Deployment rollout: new workers start, old ones drain.
            for w in self._active(pool):
                self._stop(pool, w)
            self._converge(ref, pool)

    async def view(self, ref: QueueRef) -> PoolView:
        pool = self.pools[ref]
        self._converge(ref, pool)
        ready = sum(1 for w in self._active(pool) if w.alive)
        return PoolView(pool.desired, ready, str(pool.decisions))

    async def scale(self, ref: QueueRef, replicas: int, basis: str | None = None) -> bool:
        pool = self.pools[ref]
        if basis is not None and basis != str(pool.decisions):
            return False  # another decision since that view
        pool.decisions += 1
        pool.desired = replicas
        self._converge(ref, pool)
        return True

    async def replicas(self, ref: QueueRef) -> int:
        pool = self.pools[ref]
        self._converge(ref, pool)
        return pool.desired

    async def ready_replicas(self, ref: QueueRef) -> int:
        return sum(1 for w in self._active(self.pools[ref]) if w.alive)

    async def set_deletion_costs(self, ref: QueueRef, costs: dict[str, int]) -> None:
        self.pools[ref].costs = dict(costs)

    async def delete(self, ref: QueueRef) -> None:
        pool = self.pools.get(ref)
        if pool is not None:
            pool.desired = 0
            self._converge(ref, pool)

    # -- local extras --------------------------------------------------------------------

    def workers(self, ref: QueueRef) -> list[WorkerProcess]:
        return list(self.pools[ref].workers) if ref in self.pools else []

    def metrics_endpoints(self) -> list[str]:
        return [
            f"127.0.0.1:{w.metrics_port}" for p in self.pools.values() for w in p.workers if w.alive
        ]

    def terminating(self, ref: QueueRef) -> int:
        return sum(1 for w in self.pools[ref].workers if w.stop_deadline is not None and w.alive)

    def crashes(self, ref: QueueRef) -> CrashInfo:
        pool = self.pools.get(ref)
        if pool is None:
            return CrashInfo(0, None)
        wait = max(pool.next_start - self.clock(), 0.0)
        return CrashInfo(pool.crashes, pool.last_error, wait)

    def ended_count(self) -> int:
        return sum(len(p.ended) for p in self.pools.values())

    def fates(self, since: int = 0) -> WorkerFates:
        """The workers asked to stop that have exited (the `since` first ones skipped)."""
        ended = [e for p in self.pools.values() for e in p.ended][since:]
        grace = max(
            (p.spec.worker.termination_grace_period_seconds for p in self.pools.values()),
            default=0,
        )
        return WorkerFates(tuple(ended), grace)

    def kill_all(self) -> None:
        """Stop waiting for the drain: SIGKILL every worker (a second Ctrl-C)."""
        for p in self.pools.values():
            for w in p.workers:
                w.kill("forced")

    def wait_stopped(self, timeout: float) -> bool:
        """Wait for every worker to exit (they drain first); kill stragglers past grace.
        True if none had to be killed here."""
        deadline = time.monotonic() + timeout
        clean = True
        while True:
            for ref, pool in self.pools.items():
                self._converge(ref, pool)
            if not any(w.alive for p in self.pools.values() for w in p.workers):
                for ref, pool in self.pools.items():
                    self._converge(ref, pool)  # record the last exits
                return clean
            if time.monotonic() > deadline:
                for p in self.pools.values():
                    for w in p.workers:
                        w.kill("grace")
                clean = False
            time.sleep(0.05)

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _active(pool: _Pool) -> list[WorkerProcess]:
        return [w for w in pool.workers if w.stop_deadline is None]

    def _converge(self, ref: QueueRef, pool: _Pool) -> None:
        now = self.clock()
        kept = []
        for w in pool.workers:
            if w.alive:
                if w.stop_deadline is not None and now > w.stop_deadline:
                    log.warning("%s did not stop within its grace period: killed", w.name)
                    w.kill("grace")
                kept.append(w)
            elif w.stop_deadline is None:
                self._crashed(pool, w, now)
            else:  # stopped as asked
                pool.ended.append(Ended(w.name, w.process.returncode, w.killed))
        pool.workers = kept
        active = self._active(pool)
        if len(active) > pool.desired:
            # Idle first: lowest deletion cost, then the youngest (as the ReplicaSet does).
            ranked = sorted(active, key=lambda w: (pool.costs.get(w.name, 0), -w.started))
            for w in ranked[: len(active) - pool.desired]:
                self._stop(pool, w)
        if now < pool.next_start:
            return  # backing off after crashes
        for _ in range(pool.desired - len(active)):
            pool.workers.append(self._start(ref, pool))

    def _crashed(self, pool: _Pool, w: WorkerProcess, now: float) -> None:
        """Died without being asked to: the ReplicaSet replaces it, backing off."""
        pool.crashes += 1
        if now - w.started >= STABLE_AFTER:
            pool.consecutive_crashes = 0
        pool.consecutive_crashes += 1
        pool.last_error = last_line(w.log) or f"exited with {w.process.returncode}, no output"
        wait = crash_backoff(pool.consecutive_crashes)
        pool.next_start = max(pool.next_start, now + wait)
        log.warning(
            "%s exited with %s (crash %d; restarting in %.0f s); its last words: %s (log: %s)",
            w.name,
            w.process.returncode,
            pool.crashes,
            wait,
            pool.last_error,
            w.log,
        )

    def _stop(self, pool: _Pool, w: WorkerProcess) -> None:
        grace = pool.spec.worker.termination_grace_period_seconds
        w.stop_deadline = self.clock() + grace
        if w.alive:
            w.process.send_signal(signal.SIGTERM)

    def _start(self, ref: QueueRef, pool: _Pool) -> WorkerProcess:
        pool.serial += 1
        name = f"{ref.name}-worker-{pool.serial}"
        port = free_port()
        spec = pool.spec
        env = {
            **os.environ,
            **_literal_env(spec),
            **self.extra_env,
            "KUBEQ_REDIS_URL": self.redis_url,
            "KUBEQ_QUEUE": ref.name,
            "KUBEQ_NAMESPACE": ref.namespace,
            "KUBEQ_APP": spec.worker.app,
            "KUBEQ_CONCURRENCY": str(spec.worker.concurrency),
            "KUBEQ_POD_NAME": name,
            "KUBEQ_METRICS_PORT": str(port),
            "KUBEQ_METRICS_HOST": "127.0.0.1",
            "KUBEQ_LOG_FORMAT": self.log_format,
            # The worker drains within its share of the grace period, as in a Pod.
            "KUBEQ_GRACE_SECONDS": str(
                worker_grace_seconds(spec.worker.termination_grace_period_seconds)
            ),
            "KUBEQ_QUEUE_CONFIG": queue_config_json(pool.config),
            "PYTHONUNBUFFERED": "1",
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [self.python, "-m", "kubeq.worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: a Ctrl-C in the terminal reaches `kubeq up`, which
                # then drains the workers itself, as the kubelet would.
                start_new_session=True,
                # And if `kubeq up` dies without draining (SIGKILL), they drain anyway.
                preexec_fn=die_with_parent(),
            )
        log.info("started %s (pid %d, metrics on :%d)", name, process.pid, port)
        return WorkerProcess(name, process, port, pool.template, self.clock(), log_path)


def _literal_env(spec: TaskQueueSpec) -> dict[str, str]:
    out: dict[str, str] = {}
    for var in spec.worker.env or ():
        data = var.model_dump(by_alias=True, exclude_none=True)
        if "value" in data:
            out[str(data["name"])] = str(data["value"])
        else:
            log.warning(
                "env %s uses valueFrom, which only a cluster resolves: skipped", data.get("name")
            )
    return out
