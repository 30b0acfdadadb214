"""The local backend: worker *processes* instead of Pods, for `kubeq up` and the demo.

It behaves as a Deployment's ReplicaSet would: it keeps the desired number of workers
running (a crashed one is replaced), removes the lowest deletion cost first when scaling
down, stops a worker with SIGTERM and kills it only after its termination grace period,
and rolls the pool over when the spec changes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubeq.protocol import QueueConfig
from kubeq.redis_server import free_port
from kubeq_operator.backend import PoolView, QueueRef
from kubeq_operator.manifests import config_hash, queue_config_json
from kubeq_operator.spec import TaskQueueSpec

log = logging.getLogger(__name__)


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    template: str
    started: float
    stop_deadline: float | None = None  # set once SIGTERM was sent

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class _Pool:
    spec: TaskQueueSpec
    config: QueueConfig
    template: str
    desired: int = 0
    workers: list[WorkerProcess] = field(default_factory=list)
    costs: dict[str, int] = field(default_factory=dict)
    serial: int = 0
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
    ) -> None:
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

    def wait_stopped(self, timeout: float) -> bool:
        """Wait for every worker to exit (they drain first); kill stragglers past grace."""
        deadline = time.monotonic() + timeout
        while True:
            for ref, pool in self.pools.items():
                self._converge(ref, pool)
            if not any(w.alive for p in self.pools.values() for w in p.workers):
                return True
            if time.monotonic() > deadline:
                for p in self.pools.values():
                    for w in p.workers:
                        if w.alive:
                            w.process.kill()
                return False
            time.sleep(0.05)

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _active(pool: _Pool) -> list[WorkerProcess]:
        return [w for w in pool.workers if w.stop_deadline is None]

    def _converge(self, ref: QueueRef, pool: _Pool) -> None:
        now = time.monotonic()
        kept = []
        for w in pool.workers:
            if w.alive:
                if w.stop_deadline is not None and now > w.stop_deadline:
                    log.warning("%s did not stop within its grace period: killed", w.name)
                    w.process.kill()
                kept.append(w)
            elif w.stop_deadline is None:
                # Died without being asked to: the ReplicaSet replaces it.
                log.warning("%s exited with %s: replacing it", w.name, w.process.returncode)
            # else: stopped as asked; drop it
        pool.workers = kept
        active = self._active(pool)
        if len(active) > pool.desired:
            # Idle first: lowest deletion cost, then the youngest (as the ReplicaSet does).
            ranked = sorted(active, key=lambda w: (pool.costs.get(w.name, 0), -w.started))
            for w in ranked[: len(active) - pool.desired]:
                self._stop(pool, w)
        for _ in range(pool.desired - len(active)):
            pool.workers.append(self._start(ref, pool))

    def _stop(self, pool: _Pool, w: WorkerProcess) -> None:
        grace = pool.spec.worker.termination_grace_period_seconds
        w.stop_deadline = time.monotonic() + grace
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
            "KUBEQ_GRACE_SECONDS": str(max(1, spec.worker.termination_grace_period_seconds - 2)),
            "KUBEQ_QUEUE_CONFIG": queue_config_json(pool.config),
            "PYTHONUNBUFFERED": "1",
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(
                [self.python, "-m", "kubeq.worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: a Ctrl-C in the terminal reaches `kubeq up`, which
                # then drains the workers itself, as the kubelet would.
                start_new_session=True,
            )
        log.info("started %s (pid %d, metrics on :%d)", name, process.pid, port)
        return WorkerProcess(name, process, port, pool.template, time.monotonic())


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
