"""kubeq (TelemetryTaskProcessor): a Kubernetes-native, Redis-backed task queue."""

from kubeq.app import App, TaskContext
from kubeq.exceptions import Permanent, Retry
from kubeq.protocol import (
    AsyncClient,
    Client,
    QueueConfig,
    Task,
    TaskRequest,
    TaskStatus,
)

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "Client",
    "Permanent",
    "QueueConfig",
    "Retry",
    "Task",
    "TaskContext",
    "TaskRequest",
    "TaskStatus",
    "__version__",
]
