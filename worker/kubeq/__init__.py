"""kubeq (TelemetryTaskProcessor): a Kubernetes-native, Redis-backed task queue."""

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
    "AsyncClient",
    "Client",
    "QueueConfig",
    "Task",
    "TaskRequest",
    "TaskStatus",
    "__version__",
]
