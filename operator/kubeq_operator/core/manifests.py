"""Pure builders of the objects a TaskQueue owns: worker Deployment, metrics Service,
PodDisruptionBudget and the ConfigMap with the queue's QueueConfig.

Nothing here talks to the API server; the handlers create or patch what these return.

The QueueConfig reaches workers inline, in the KUBEQ_QUEUE_CONFIG env var of the pod
template, rather than through the ConfigMap: a pod then keeps the exact config of its
ReplicaSet for its whole life (a restarted container of an old ReplicaSet cannot pick up
a newer ConfigMap mid-rollout), and a config change is a template change, so it rolls out
like any other. The ConfigMap is the same JSON for people and tools (`kubectl get cm`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeq.protocol.config import QueueConfig
from kubeq_operator.core.spec import TaskQueueSpec

Manifest = dict[str, Any]

APP_NAME = "kubeq-worker"
MANAGED_BY = "kubeq-operator"
CONTAINER_NAME = "worker"
METRICS_PORT_NAME = "metrics"
CONFIG_KEY = "queue-config.json"
CONFIG_HASH_ANNOTATION = "kubeq.io/config-hash"
#: On the Deployment: the TaskQueue spec it was built from (see `spec_record`).
SPEC_ANNOTATION = "kubeq.io/spec"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
CA_MOUNT_DIR = "/etc/kubeq/redis-ca"
CLIENT_CERT_MOUNT_DIR = "/etc/kubeq/redis-client"
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class OwnerRef:
    """The TaskQueue that owns the built objects (garbage-collected with it)."""

    api_version: str
    kind: str
    name: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> OwnerRef:
        meta = body["metadata"]
        return cls(body["apiVersion"], body["kind"], meta["name"], meta["uid"])

    def to_manifest(self) -> Manifest:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


# --- names and labels ----------------------------------------------------------------------


def _dns_label(name: str, limit: int = 63) -> str:
    """A DNS-1035 label (Service names): '.' is not allowed there, nor a leading digit."""
    label = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if not label[:1].isalpha():
        label = "q-" + label
    if len(label) > limit:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        label = label[: limit - 9].rstrip("-") + "-" + digest
    return label.rstrip("-")


def deployment_name(name: str) -> str:
    return f"{name}-worker"


def pdb_name(name: str) -> str:
    return f"{name}-worker"


def config_map_name(name: str) -> str:
    return f"{name}-queue-config"


def metrics_service_name(name: str) -> str:
    return _dns_label(f"{name}-worker-metrics")


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select one TaskQueue's worker pods (immutable in a Deployment)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}


def labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "kubeq",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_string(name: str) -> str:
    """status.selector, read by the scale subresource (and so by `kubectl scale`, HPAs, VPAs)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def _metadata(name: str, queue: str, namespace: str, owner: OwnerRef | None) -> Manifest:
    meta: Manifest = {"name": name, "namespace": namespace, "labels": labels(queue)}
    if owner is not None:
        meta["ownerReferences"] = [owner.to_manifest()]
    return meta


# --- config --------------------------------------------------------------------------------


def queue_config_json(config: QueueConfig) -> str:
    """Canonical JSON (sorted keys) so that equal configs hash equally."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def worker_grace_seconds(termination_grace_period_seconds: int) -> int:
    """The worker's drain budget (KUBEQ_GRACE_SECONDS) inside the pod's termination grace
    period: 2 s short of it, for the process to exit before the kubelet's SIGKILL, so
    what is still running is released rather than left to lease expiry."""
    return max(1, termination_grace_period_seconds - 2)


def config_hash(config: QueueConfig) -> str:
    return hashlib.sha256(queue_config_json(config).encode()).hexdigest()[:16]


def spec_record(spec: TaskQueueSpec) -> str:
    """The spec as canonical JSON, for the Deployment's SPEC_ANNOTATION.

    Written in the same patch as the pod template, so it always names the spec the running
    template was built from: after an operator restart whose current spec the API server
    refuses, the autoscaler scales that Deployment by this spec (`recorded_spec`), as it did
    before the restart. On the Deployment, not the ConfigMap: the ConfigMap is applied
    first and already carries a spec whose Deployment is then refused.
    """
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(dumped, sort_keys=True, separators=(",", ":"))


def recorded_spec(deployment: Mapping[str, Any], owner_uid: str) -> dict[str, Any] | None:
    """The raw spec recorded on a Deployment that `owner_uid` controls, else None.

    Raw: the caller checks it as any spec (`crd_schema.checked_spec`, pod policy) before use;
    anything unreadable (no annotation, not JSON, not an object, someone else's Deployment)
    is None.
    """
    meta = deployment.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    if not any(
        isinstance(o, Mapping) and o.get("controller") and o.get("uid") == owner_uid for o in owners
    ):
        return None
    raw = (meta.get("annotations") or {}).get(SPEC_ANNOTATION)
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def build_config_map(
    name: str, namespace: str, spec: TaskQueueSpec, *, owner: OwnerRef | None = None
) -> Manifest:
    config = spec.to_queue_config(name, namespace)
    meta = _metadata(config_map_name(name), name, namespace, owner)
    meta["annotations"] = {CONFIG_HASH_ANNOTATION: config_hash(config)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CONFIG_KEY: queue_config_json(config)},
    }


# --- the worker Deployment -----------------------------------------------------------------


def _merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Deep merge of mappings; the override wins, lists are replaced, not appended."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _redis_env(spec: TaskQueueSpec) -> list[Manifest]:
    redis = spec.redis
    env: list[Manifest] = []
    if redis.secret_ref is not None:
        ref = {"name": redis.secret_ref.name, "key": redis.secret_ref.key}
        env.append({"name": "KUBEQ_REDIS_URL", "valueFrom": {"secretKeyRef": ref}})
    else:
        env.append({"name": "KUBEQ_REDIS_URL", "value": redis.url})
    if redis.username is not None:
        env.append({"name": "KUBEQ_REDIS_USERNAME", "value": redis.username})
    if redis.password_secret_ref is not None:
        ref = {"name": redis.password_secret_ref.name, "key": redis.password_secret_ref.key}
        env.append({"name": "KUBEQ_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": ref}})
    if redis.tls.enabled:
        env.append({"name": "KUBEQ_REDIS_TLS", "value": "true"})
    if redis.tls.insecure_skip_verify:
        env.append({"name": "KUBEQ_REDIS_TLS_INSECURE_SKIP_VERIFY", "value": "true"})
    if redis.tls.ca_secret_ref is not None:
        env.append({"name": "KUBEQ_REDIS_TLS_CA_FILE", "value": f"{CA_MOUNT_DIR}/ca.crt"})
    if redis.tls.client_cert_secret_ref is not None:
        for name, file in (("CERT", "tls.crt"), ("KEY", "tls.key")):
            path = f"{CLIENT_CERT_MOUNT_DIR}/{file}"
            env.append({"name": f"KUBEQ_REDIS_TLS_{name}_FILE", "value": path})
    return env


# Used when spec.worker.resources is absent: a pod without requests is scheduled anywhere
# and evicted first, and one without a memory limit can take its node down with it.
DEFAULT_WORKER_RESOURCES: Manifest = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
POD_SECURITY_CONTEXT: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: Manifest = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def managed_replicas(spec: TaskQueueSpec) -> int | None:
    """What to pass as `replicas` when patching: None while the autoscaler owns the count."""
    return None if spec.autoscaling.enabled else spec.static_replicas


def build_deployment(
    name: str,
    namespace: str,
    spec: TaskQueueSpec,
    *,
    replicas: int | None,
    owner: OwnerRef | None = None,
) -> Manifest:
    """The worker Deployment.

    `replicas=None` leaves spec.replicas out, so that a patch with this manifest does not
    fight the autoscaler, which owns the count while autoscaling is enabled (on create,
    pass the first decision's count, or the API server defaults it to 1).
    """
    worker, overrides = spec.worker, spec.worker.pod_template
    config = spec.to_queue_config(name, namespace)
    digest = config_hash(config)

    env: list[Manifest] = [
        *_redis_env(spec),
        {"name": "KUBEQ_CONCURRENCY", "value": str(worker.concurrency)},
        {"name": "KUBEQ_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "KUBEQ_POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "KUBEQ_METRICS_PORT", "value": str(worker.metrics_port)},
        {"name": "KUBEQ_QUEUE_CONFIG", "value": queue_config_json(config)},
    ]
    user_env = [e.model_dump(by_alias=True, exclude_none=True) for e in worker.env or ()]
    if not any(e.get("name") == "KUBEQ_GRACE_SECONDS" for e in user_env):
        grace = worker_grace_seconds(worker.termination_grace_period_seconds)
        env.append({"name": "KUBEQ_GRACE_SECONDS", "value": str(grace)})
    env += user_env
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]
    ca = spec.redis.tls.ca_secret_ref
    if ca is not None:
        items = [{"key": ca.key, "path": "ca.crt"}]
        volumes.append({"name": "redis-ca", "secret": {"secretName": ca.name, "items": items}})
        mounts.append({"name": "redis-ca", "mountPath": CA_MOUNT_DIR, "readOnly": True})
    cert = spec.redis.tls.client_cert_secret_ref
    if cert is not None:
        items = [
            {"key": cert.cert_key, "path": "tls.crt"},
            {"key": cert.key_key, "path": "tls.key"},
        ]
        # The key readable by the worker's user and group (fsGroup) only, not by others.
        secret = {"secretName": cert.name, "items": items, "defaultMode": 0o440}
        volumes.append({"name": "redis-client-cert", "secret": secret})
        mounts.append(
            {"name": "redis-client-cert", "mountPath": CLIENT_CERT_MOUNT_DIR, "readOnly": True}
        )
    if overrides is not None:
        volumes += copy.deepcopy(overrides.volumes or [])
        mounts += copy.deepcopy(overrides.volume_mounts or [])

    def probe(path: str, period: int) -> Manifest:
        return {
            "httpGet": {"path": path, "port": METRICS_PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        }

    container: Manifest = {
        "name": CONTAINER_NAME,
        "image": worker.image,
        "command": ["kubeq"],
        "args": ["worker", "--app", worker.app, "--queue", name, "--namespace", namespace],
        "env": env,
        "ports": [
            {"name": METRICS_PORT_NAME, "containerPort": worker.metrics_port, "protocol": "TCP"}
        ],
        "readinessProbe": probe("/readyz", 5),
        "livenessProbe": {**probe("/healthz", 10), "initialDelaySeconds": 10},
        "resources": copy.deepcopy(
            worker.resources if worker.resources is not None else DEFAULT_WORKER_RESOURCES
        ),
        "securityContext": _merge(
            CONTAINER_SECURITY_CONTEXT,
            overrides.container_security_context if overrides else None,
        ),
        "volumeMounts": mounts,
    }
    if worker.image_pull_policy is not None:
        container["imagePullPolicy"] = worker.image_pull_policy

    pod_spec: Manifest = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": worker.termination_grace_period_seconds,
        "securityContext": _merge(
            POD_SECURITY_CONTEXT, overrides.security_context if overrides else None
        ),
        # Workers never call the API server, and service links only add env noise.
        "automountServiceAccountToken": bool(
            overrides and overrides.automount_service_account_token
        ),
        "enableServiceLinks": False,
    }
    pod_labels = labels(name)
    pod_annotations = {CONFIG_HASH_ANNOTATION: digest}
    if overrides is not None:
        pod_labels = {**(overrides.labels or {}), **pod_labels}  # ours select the pods: ours win
        pod_annotations = {**(overrides.annotations or {}), **pod_annotations}
        optional = {
            "nodeSelector": overrides.node_selector,
            "tolerations": overrides.tolerations,
            "affinity": overrides.affinity,
            "topologySpreadConstraints": overrides.topology_spread_constraints,
            "serviceAccountName": overrides.service_account_name,
            "priorityClassName": overrides.priority_class_name,
            "runtimeClassName": overrides.runtime_class_name,
            "imagePullSecrets": [{"name": s.name} for s in overrides.image_pull_secrets]
            if overrides.image_pull_secrets is not None
            else None,
        }
        pod_spec.update({k: copy.deepcopy(v) for k, v in optional.items() if v is not None})

    meta = _metadata(deployment_name(name), name, namespace, owner)
    meta["annotations"] = {CONFIG_HASH_ANNOTATION: digest, SPEC_ANNOTATION: spec_record(spec)}
    deployment_spec: Manifest = {
        "selector": {"matchLabels": selector_labels(name)},
        "revisionHistoryLimit": 3,
        # Surge new workers before old ones drain, so a rollout never lowers capacity.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
        },
        "template": {
            "metadata": {"labels": pod_labels, "annotations": pod_annotations},
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        deployment_spec = {"replicas": replicas, **deployment_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": deployment_spec,
    }


def build_metrics_service(
    name: str, namespace: str, spec: TaskQueueSpec, *, owner: OwnerRef | None = None
) -> Manifest:
    """A headless Service over the worker pods for Prometheus (ServiceMonitor) discovery."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(metrics_service_name(name), name, namespace, owner),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(name),
            # Scrape workers that are not ready too: that is when their metrics matter.
            "publishNotReadyAddresses": True,
            "ports": [
                {
                    "name": METRICS_PORT_NAME,
                    "port": spec.worker.metrics_port,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_pdb(
    name: str, namespace: str, spec: TaskQueueSpec, *, owner: OwnerRef | None = None
) -> Manifest:
    """Voluntary disruptions (node drains) take one worker at a time.

    maxUnavailable, not minAvailable, so a pool scaled to zero never blocks a drain; and
    unhealthy pods may always be evicted, so a stuck worker never blocks one either.
    """
    del spec  # the same for every queue today; kept for a uniform builder signature
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(pdb_name(name), name, namespace, owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def deletion_cost_annotations(pods_inflight: Mapping[str, int]) -> dict[str, int]:
    """Pod name → controller.kubernetes.io/pod-deletion-cost.

    The ReplicaSet removes pods with the lowest cost first, so the cost is the pod's
    in-flight task count: idle pods (0) go first, the busiest last. Values are clamped to
    the annotation's int32 range. Apply as a string annotation, and only before scaling
    down (each patch is a write to the API server).
    """
    return {pod: min(_INT32_MAX, max(0, n)) for pod, n in pods_inflight.items()}
