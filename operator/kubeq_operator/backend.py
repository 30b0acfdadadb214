"""The small interface the reconcile and autoscaling code drives.

Two implementations: Kubernetes (a Deployment and its pods, `k8s_backend.py`) and local
processes (`local_backend.py`, for `kubeq up`). The autoscaler and reconcile code cannot
tell them apart, so `kubeq up` exercises the very code the operator runs in a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kubeq.protocol import QueueConfig
from kubeq_operator.spec import TaskQueueSpec


@dataclass(frozen=True, order=True)
class QueueRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Backend(Protocol):
    async def apply(self, ref: QueueRef, spec: TaskQueueSpec, config: QueueConfig) -> None:
        """Create or update the worker pool (not its size) to match the spec."""

    async def scale(self, ref: QueueRef, replicas: int) -> None:
        """Set the desired number of workers; removal prefers the lowest deletion cost."""

    async def replicas(self, ref: QueueRef) -> int:
        """The desired number of workers currently set."""

    async def ready_replicas(self, ref: QueueRef) -> int:
        """Workers running and ready."""

    async def set_deletion_costs(self, ref: QueueRef, costs: dict[str, int]) -> None:
        """Mark workers (by pod name) so that the cheapest are removed first."""

    async def delete(self, ref: QueueRef) -> None:
        """Remove the worker pool."""
