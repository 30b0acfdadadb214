"""The small interface the reconcile and autoscaling code drives.

Two implementations: Kubernetes (a Deployment and its pods, `kube/backend.py`) and local
processes (`local/backend.py`, for `kubeq up`). The autoscaler and reconcile code cannot
tell them apart, so `kubeq up` exercises the very code the operator runs in a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kubeq.protocol import QueueConfig
from kubeq_operator.core.spec import TaskQueueSpec


@dataclass(frozen=True)
class PoolView:
    """The pool as one read saw it. `basis` identifies the last scale decision it carries:
    a decision made from this view is applied only if no other decision came since
    (compare-and-swap), so a replica with an old view cannot undo a newer decision."""

    replicas: int  # desired
    ready: int
    basis: str | None = None


@dataclass(frozen=True, order=True)
class QueueRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Backend(Protocol):
    async def apply(self, ref: QueueRef, spec: TaskQueueSpec, config: QueueConfig) -> None:
        """Create or update the worker pool (not its size) to match the spec."""

    async def view(self, ref: QueueRef) -> PoolView:
        """Desired and ready workers, and the basis of the last scale decision, in one read."""

    async def scale(self, ref: QueueRef, replicas: int, basis: str | None = None) -> bool:
        """Set the desired number of workers; removal prefers the lowest deletion cost.

        With `basis` (from `view`), only if no other scale decision was made since that
        view; returns False, changing nothing, when one was. None: unconditionally."""

    async def replicas(self, ref: QueueRef) -> int:
        """The desired number of workers currently set."""

    async def ready_replicas(self, ref: QueueRef) -> int:
        """Workers running and ready."""

    async def set_deletion_costs(self, ref: QueueRef, costs: dict[str, int]) -> None:
        """Mark workers (by pod name) so that the cheapest are removed first."""

    async def delete(self, ref: QueueRef) -> None:
        """Remove the worker pool."""
