"""kubeq's Kubernetes operator: reconciles TaskQueue resources into autoscaled worker pools.

Handlers (kopf) are wiring only; the decisions are pure functions in `spec` (what a
TaskQueue means), `manifests` (what to apply) and `scaling` (how many workers).
"""
