"""kubeq: a Kubernetes-native, Redis-backed task queue.

The public names below are imported on first use (PEP 562), so that `import kubeq.cli`
or `import kubeq.protocol` does not pay for the App and worker machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubeq.app import App, TaskContext
    from kubeq.exceptions import Permanent, Retry
    from kubeq.protocol import (
        AsyncClient,
        Client,
        QueueConfig,
        Task,
        TaskPage,
        TaskRequest,
        TaskStatus,
    )
    from kubeq.protocol.workflow import Step, chain, chord, group

__version__ = "0.1.0"

_WHERE = {
    "App": "kubeq.app",
    "TaskContext": "kubeq.app",
    "Permanent": "kubeq.exceptions",
    "Retry": "kubeq.exceptions",
    "AsyncClient": "kubeq.protocol",
    "Client": "kubeq.protocol",
    "QueueConfig": "kubeq.protocol",
    "Task": "kubeq.protocol",
    "TaskPage": "kubeq.protocol",
    "TaskRequest": "kubeq.protocol",
    "TaskStatus": "kubeq.protocol",
    "Step": "kubeq.protocol.workflow",
    "chain": "kubeq.protocol.workflow",
    "chord": "kubeq.protocol.workflow",
    "group": "kubeq.protocol.workflow",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kubeq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "App",
    "AsyncClient",
    "Client",
    "Permanent",
    "QueueConfig",
    "Retry",
    "Step",
    "Task",
    "TaskContext",
    "TaskPage",
    "TaskRequest",
    "TaskStatus",
    "__version__",
    "chain",
    "chord",
    "group",
]
