"""kubeq's Kubernetes operator: reconciles TaskQueue resources into autoscaled worker pools.

Five rooms, kept apart by import-linter contracts (pyproject.toml):

- `core`: the decisions, pure (no I/O, time a parameter): `spec` (what a TaskQueue means),
  `manifests` (what to apply), `scaling` (how many workers), `status`, schedule ticks.
- `engine`: what both shells drive: the autoscaler round, the backend interface, metrics,
  the schedule round. Talks to Redis; knows neither Kubernetes nor `kubeq up`.
- `kube`: the Kubernetes shell (kopf handlers, the API client, `kubeq operator`).
- `local`: the local shell (`kubeq up`, `kubeq demo`: worker processes, no cluster).
- `tools`: developer commands (`python -m kubeq_operator.tools.crd_doc`).
"""
