"""The Redis task protocol: models, key schema, Lua scripts and the queue clients.

The bottom layer of kubeq: it imports nothing else of kubeq, and producers, workers and
the operator all speak through it.
"""

from kubeq.protocol.client import AsyncClient, Client, system_clock
from kubeq.protocol.config import Backoff, PriorityLevel, QueueConfig, RateLimit
from kubeq.protocol.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    InvalidTask,
    InvalidURL,
    KubeqError,
    PayloadNotJSON,
    PayloadTooLarge,
    PermissionDenied,
    ProtocolError,
    QueueFull,
    ResultTimeout,
    TaskFailed,
    TaskNotFound,
    UnknownPriority,
)
from kubeq.protocol.keys import QueueKeys
from kubeq.protocol.models import (
    ClaimedTask,
    DeadLetter,
    LevelStats,
    QueueStats,
    Task,
    TaskError,
    TaskStatus,
    WorkerInfo,
)
from kubeq.protocol.ops import Claim, MalformedClaim, QueueOps, Settlement, TaskRequest

__all__ = [
    "AsyncClient",
    "AuthenticationFailed",
    "Backoff",
    "Claim",
    "ClaimedTask",
    "Client",
    "ConfigError",
    "ConnectionFailed",
    "DeadLetter",
    "InvalidTask",
    "InvalidURL",
    "KubeqError",
    "LevelStats",
    "MalformedClaim",
    "PayloadNotJSON",
    "PayloadTooLarge",
    "PermissionDenied",
    "PriorityLevel",
    "ProtocolError",
    "QueueConfig",
    "QueueFull",
    "QueueKeys",
    "QueueOps",
    "QueueStats",
    "RateLimit",
    "ResultTimeout",
    "Settlement",
    "Task",
    "TaskError",
    "TaskFailed",
    "TaskNotFound",
    "TaskRequest",
    "TaskStatus",
    "UnknownPriority",
    "WorkerInfo",
    "system_clock",
]
