"""The worker process: `run_worker(WorkerSettings()) -> exit code`."""

from __future__ import annotations

from kubeq.worker.process import run_worker, serve
from kubeq.worker.settings import WorkerSettings

__all__ = ["WorkerSettings", "run_worker", "serve"]
