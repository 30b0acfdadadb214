"""How each system is run: its worker command, its producer command, its environment.

Peers run from the bench-only environments made by setup.sh (.peers-venv, .peers-node);
kubeq from .kubeq-venv (`kubeq[fast]` as a user installs it, editable: this tree's code),
or the project's own interpreter when that is missing. Configurations are each system's usual
single-process one (the settings the peers' docs suggest, defaults otherwise).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
PEERS_BIN = HERE / ".peers-venv" / "bin"
KUBEQ_PY = HERE / ".kubeq-venv" / "bin" / "python"
NODE = "/usr/bin/node"


@dataclass(frozen=True)
class System:
    name: str
    label: str
    worker: tuple[str, ...]  # "{url}" is replaced by the Redis URL
    producer: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    bulk: bool = False  # has a batch submit API measured separately
    # The floor row that runs this system's task body alone (same runtime, client, loop
    # and concurrency): its worker CPU beyond that floor's is the system's own work.
    floor: str | None = None


def compile_sources() -> None:
    """Byte-compile kubeq's own tree and the bench apps before a run. The peers come from
    pip, which compiles what it installs; kubeq runs from an editable install, whose
    sources would otherwise be compiled at every worker start-up (start-up counts in the
    drain) wherever PYTHONDONTWRITEBYTECODE is set or the tree just changed."""
    import kubeq

    py = str(KUBEQ_PY) if KUBEQ_PY.exists() else sys.executable
    for tree in (Path(kubeq.__file__).parent, APPS):
        subprocess.run([py, "-m", "compileall", "-q", str(tree)], check=True)


def _peer(tool: str) -> str:
    return str(PEERS_BIN / tool)


def systems(kubeq_concurrency: int = 64) -> dict[str, System]:
    py = str(KUBEQ_PY) if KUBEQ_PY.exists() else sys.executable
    kubeq_env = {
        "KUBEQ_APP": "kubeq_app:app",
        "KUBEQ_QUEUE": "bench",
        "KUBEQ_CONCURRENCY": str(kubeq_concurrency),
        "KUBEQ_METRICS_PORT": "0",
        "KUBEQ_LOG_LEVEL": "WARNING",
    }
    all_ = [
        System(
            "kubeq",
            f"kubeq, concurrency {kubeq_concurrency}",
            (py, "-m", "kubeq.worker"),
            (py, "kubeq_app.py"),
            kubeq_env,
            bulk=True,
            floor="floor-python",
        ),
        # An ablation, not a peer: the same worker with Python's own garbage-collector
        # policy (KUBEQ_GC_GEN0_THRESHOLD=0), to show what kubeq.worker.gc_policy gains.
        System(
            "kubeq-stock-gc",
            f"kubeq, concurrency {kubeq_concurrency}, Python's GC policy",
            (py, "-m", "kubeq.worker"),
            (py, "kubeq_app.py"),
            kubeq_env | {"KUBEQ_GC_GEN0_THRESHOLD": "0"},
            floor="floor-python",
        ),
        # Not peers either: the task body alone, no queue, in each runtime (the ceiling of
        # any worker there: what a worker costs beyond it is its own work).
        System(
            "floor-python",
            "no queue: the body alone, 64 coroutines (Python, uvloop)",
            (py, "floor_app.py", "worker"),
            (py, "floor_app.py"),
        ),
        # Its ablation (not in the default run): no per-command timeout on the body's
        # client, as ioredis has by default (apps/shared.py, BENCH_BODY_TIMEOUT).
        System(
            "floor-python-no-timeout",
            "no queue: the body alone, 64 coroutines, socket_timeout=None",
            (py, "floor_app.py", "worker"),
            (py, "floor_app.py"),
            {"BENCH_BODY_TIMEOUT": "none"},
        ),
        System(
            "floor-node",
            "no queue: the body alone, 50 async loops (Node, ioredis)",
            (NODE, "floor_app.js", "worker"),
            (NODE, "floor_app.js"),
        ),
        System(
            "bullmq",
            "BullMQ (Node), concurrency 50",
            (NODE, "bullmq_app.js", "worker", "50"),
            (NODE, "bullmq_app.js"),
            bulk=True,
            floor="floor-node",
        ),
        System(
            "taskiq",
            "taskiq, ListQueueBroker",
            (_peer("taskiq"), "worker", "taskiq_app:broker", "--workers", "1"),
            (_peer("python"), "taskiq_app.py"),
        ),
        System(
            "dramatiq",
            "Dramatiq, 1 process x 8 threads",
            (_peer("dramatiq"), "dramatiq_app", "--processes", "1"),
            (_peer("python"), "dramatiq_app.py"),
        ),
        System(
            "celery",
            "Celery, -P solo",
            (_peer("celery"), "-A", "celery_app", "worker", "-P", "solo", "-l", "WARNING"),
            (_peer("python"), "celery_app.py"),
        ),
        System(
            "rq",
            "RQ, SimpleWorker",
            (_peer("rq"), "worker", "-u", "{url}", "-w", "rq.worker.SimpleWorker", "bench"),
            (_peer("python"), "rq_app.py"),
        ),
        System(
            "arq",
            "arq, defaults",
            (_peer("arq"), "arq_app.WorkerSettings"),
            (_peer("python"), "arq_app.py"),
        ),
    ]
    return {s.name: s for s in all_}
