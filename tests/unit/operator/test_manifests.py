"""The manifest builders: valid Kubernetes objects (strict schemas, oldest and newest
supported versions) that say what the operator promises."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubeq.protocol.config import QueueConfig
from kubeq_operator.core import manifests as m
from kubeq_operator.core.crd_schema import checked_spec
from kubeq_operator.core.spec import TaskQueueSpec, parse_spec

ROOT = Path(__file__).resolve().parents[3]
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
OWNER = m.OwnerRef("kubeq.io/v1alpha1", "TaskQueue", "telemetry", "6f1c-uid")
BASE = {
    "redis": {"url": "redis://redis:6379/0"},
    "worker": {"image": "img:1", "app": "pkg.mod:app"},
}

FULL = {
    "redis": {
        "secretRef": {"name": "redis-conn"},
        "username": "kubeq",
        "passwordSecretRef": {"name": "redis-pass", "key": "pw"},
        "tls": {
            "enabled": True,
            "insecureSkipVerify": True,
            "caSecretRef": {"name": "redis-ca"},
            "clientCertSecretRef": {"name": "redis-client", "keyKey": "client.key"},
        },
    },
    "worker": {
        "image": "img:1",
        "imagePullPolicy": "IfNotPresent",
        "app": "pkg.mod:app",
        "concurrency": 32,
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "env": [
            {"name": "LOG_LEVEL", "value": "debug"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
        ],
        "terminationGracePeriodSeconds": 120,
        "metricsPort": 9200,
        "podTemplate": {
            "labels": {"team": "data", "app.kubernetes.io/instance": "hijack"},
            "annotations": {"owner": "data", m.CONFIG_HASH_ANNOTATION: "forged"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "pool", "operator": "In", "values": ["a"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "telemetry"}},
                }
            ],
            "serviceAccountName": "workers",
            "automountServiceAccountToken": True,
            "priorityClassName": "high",
            "runtimeClassName": "gvisor",
            "imagePullSecrets": [{"name": "registry"}],
            "securityContext": {"runAsUser": 2000, "supplementalGroups": [5]},
            "containerSecurityContext": {"readOnlyRootFilesystem": False},
            "volumes": [{"name": "certs", "configMap": {"name": "certs"}}],
            "volumeMounts": [{"name": "certs", "mountPath": "/certs"}],
        },
    },
}


def _example_specs() -> list[tuple[str, TaskQueueSpec]]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "TaskQueue":
                out.append((doc["metadata"]["name"], parse_spec(doc["spec"])))
    return out


SPECS = [("base", parse_spec(BASE)), ("full", parse_spec(FULL)), *_example_specs()]


def _all_objects(name: str, spec: TaskQueueSpec) -> list[dict[str, Any]]:
    return [
        m.build_deployment(name, "prod", spec, replicas=None, owner=OWNER),
        m.build_deployment(name, "prod", spec, replicas=0),
        m.build_deployment(name, "prod", spec, replicas=5, owner=OWNER),
        m.build_metrics_service(name, "prod", spec, owner=OWNER),
        m.build_pdb(name, "prod", spec, owner=OWNER),
        m.build_config_map(name, "prod", spec, owner=OWNER),
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[s[0] for s in SPECS])
def test_every_object_validates_strictly(name: str, spec: TaskQueueSpec, version: str) -> None:
    for obj in _all_objects(name, spec):
        kubernetes_validate.validate(obj, version, strict=True)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(deployment)["env"]}


def test_labels_and_selector() -> None:
    assert m.selector_labels("telemetry") == {
        "app.kubernetes.io/name": "kubeq-worker",
        "app.kubernetes.io/instance": "telemetry",
    }
    assert m.labels("telemetry") == {
        **m.selector_labels("telemetry"),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "kubeq",
        "app.kubernetes.io/managed-by": "kubeq-operator",
    }
    assert m.selector_string("telemetry") == (
        "app.kubernetes.io/instance=telemetry,app.kubernetes.io/name=kubeq-worker"
    )


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[s[0] for s in SPECS])
def test_deployment_basics(name: str, spec: TaskQueueSpec) -> None:
    d = m.build_deployment(name, "prod", spec, replicas=None, owner=OWNER)
    template = d["spec"]["template"]
    pod = template["spec"]
    c = _container(d)
    assert d["metadata"]["name"] == f"{name}-worker"
    assert d["metadata"]["namespace"] == "prod"
    assert d["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kubeq.io/v1alpha1",
            "kind": "TaskQueue",
            "name": "telemetry",
            "uid": "6f1c-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    # The selector must select the template's pods and only this queue's pods.
    assert d["spec"]["selector"]["matchLabels"] == m.selector_labels(name)
    assert template["metadata"]["labels"].items() >= m.labels(name).items()
    assert c["command"] == ["kubeq"]
    assert c["args"] == ["worker", "--app", spec.worker.app, "--queue", name, "--namespace", "prod"]
    assert c["image"] == spec.worker.image
    assert c["ports"] == [
        {"name": "metrics", "containerPort": spec.worker.metrics_port, "protocol": "TCP"}
    ]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] == spec.worker.termination_grace_period_seconds
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    env = _env(d)
    assert env["KUBEQ_CONCURRENCY"]["value"] == str(spec.worker.concurrency)
    assert env["KUBEQ_METRICS_PORT"]["value"] == str(spec.worker.metrics_port)
    assert env["KUBEQ_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Workers get exactly the QueueConfig the spec means.
    config = QueueConfig.model_validate_json(env["KUBEQ_QUEUE_CONFIG"]["value"])
    assert config == spec.to_queue_config(name, "prod")
    digest = m.config_hash(config)
    assert template["metadata"]["annotations"][m.CONFIG_HASH_ANNOTATION] == digest
    assert d["metadata"]["annotations"][m.CONFIG_HASH_ANNOTATION] == digest


@pytest.mark.parametrize("termination", [1, 2, 3, 10, 60, 86400])
def test_the_worker_drains_within_the_pods_termination_grace_period(termination: int) -> None:
    """The kubelet SIGKILLs at terminationGracePeriodSeconds; the worker's own drain
    budget (KUBEQ_GRACE_SECONDS, 30 s when unset) must end before it, or a short period
    kills workers before they release their tasks."""
    spec = parse_spec(
        BASE | {"worker": {**BASE["worker"], "terminationGracePeriodSeconds": termination}}
    )
    env = _env(m.build_deployment("q", "prod", spec, replicas=None))
    grace = int(env["KUBEQ_GRACE_SECONDS"]["value"])
    assert grace >= 1
    assert grace <= max(1, termination - 2)
    assert grace >= termination - 2  # and not needlessly short


def test_a_grace_the_author_sets_is_kept_once() -> None:
    worker = {**BASE["worker"], "env": [{"name": "KUBEQ_GRACE_SECONDS", "value": "5"}]}
    c = _container(
        m.build_deployment("q", "prod", parse_spec(BASE | {"worker": worker}), replicas=None)
    )
    assert [e["value"] for e in c["env"] if e["name"] == "KUBEQ_GRACE_SECONDS"] == ["5"]


def test_hardened_by_default() -> None:
    d = m.build_deployment("q", "prod", parse_spec(BASE), replicas=None)
    pod = d["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert _container(d)["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "ownerReferences" not in d["metadata"]
    assert "imagePullPolicy" not in _container(d)  # Kubernetes picks it from the tag


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (BASE, {"KUBEQ_REDIS_URL": {"name": "KUBEQ_REDIS_URL", "value": "redis://redis:6379/0"}}),
        (
            FULL,
            {
                "KUBEQ_REDIS_URL": {
                    "name": "KUBEQ_REDIS_URL",
                    "valueFrom": {"secretKeyRef": {"name": "redis-conn", "key": "url"}},
                },
                "KUBEQ_REDIS_USERNAME": {"name": "KUBEQ_REDIS_USERNAME", "value": "kubeq"},
                "KUBEQ_REDIS_PASSWORD": {
                    "name": "KUBEQ_REDIS_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": "redis-pass", "key": "pw"}},
                },
                "KUBEQ_REDIS_TLS": {"name": "KUBEQ_REDIS_TLS", "value": "true"},
                "KUBEQ_REDIS_TLS_INSECURE_SKIP_VERIFY": {
                    "name": "KUBEQ_REDIS_TLS_INSECURE_SKIP_VERIFY",
                    "value": "true",
                },
                "KUBEQ_REDIS_TLS_CA_FILE": {
                    "name": "KUBEQ_REDIS_TLS_CA_FILE",
                    "value": "/etc/kubeq/redis-ca/ca.crt",
                },
                "KUBEQ_REDIS_TLS_CERT_FILE": {
                    "name": "KUBEQ_REDIS_TLS_CERT_FILE",
                    "value": "/etc/kubeq/redis-client/tls.crt",
                },
                "KUBEQ_REDIS_TLS_KEY_FILE": {
                    "name": "KUBEQ_REDIS_TLS_KEY_FILE",
                    "value": "/etc/kubeq/redis-client/tls.key",
                },
            },
        ),
    ],
    ids=["url", "secrets-and-tls"],
)
def test_redis_env(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    env = _env(m.build_deployment("q", "prod", parse_spec(spec), replicas=None))
    assert {k: v for k, v in env.items() if k.startswith("KUBEQ_REDIS")} == expected


def test_overrides_are_merged_but_cannot_break_ownership() -> None:
    d = m.build_deployment("telemetry", "prod", parse_spec(FULL), replicas=None)
    template = d["spec"]["template"]
    pod, c = template["spec"], _container(d)
    # Our selector labels and config hash win over the user's.
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "telemetry"
    assert template["metadata"]["labels"]["team"] == "data"
    assert template["metadata"]["annotations"]["owner"] == "data"
    assert template["metadata"]["annotations"][m.CONFIG_HASH_ANNOTATION] != "forged"
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
        assert pod[key] == FULL["worker"]["podTemplate"][key]
    assert pod["serviceAccountName"] == "workers"
    assert pod["automountServiceAccountToken"] is True
    assert pod["priorityClassName"] == "high"
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    # Security contexts are merged key by key over the hardened defaults.
    assert pod["securityContext"]["runAsUser"] == 2000
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["supplementalGroups"] == [5]
    assert c["securityContext"]["readOnlyRootFilesystem"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["resources"] == FULL["worker"]["resources"]
    # User env comes after ours, untouched.
    assert [e["name"] for e in c["env"]][-2:] == ["LOG_LEVEL", "TOKEN"]
    assert c["env"][-1] == FULL["worker"]["env"][1]
    # Volumes: ours, the CA secret, the client certificate, then the user's.
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "redis-ca", "redis-client-cert", "certs"]
    assert pod["volumes"][1]["secret"] == {
        "secretName": "redis-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert pod["volumes"][2]["secret"] == {
        "secretName": "redis-client",
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "client.key", "path": "tls.key"}],
        "defaultMode": 0o440,
    }
    assert [v["mountPath"] for v in c["volumeMounts"]] == [
        "/tmp",
        "/etc/kubeq/redis-ca",
        "/etc/kubeq/redis-client",
        "/certs",
    ]


def test_builders_do_not_alias_the_spec() -> None:
    spec = parse_spec(FULL)
    d = m.build_deployment("telemetry", "prod", spec, replicas=None)
    d["spec"]["template"]["spec"]["tolerations"].append({"key": "x"})
    _container(d)["resources"]["limits"]["memory"] = "9Gi"
    assert spec == parse_spec(FULL)


@pytest.mark.parametrize(("replicas", "expected"), [(None, "absent"), (0, 0), (3, 3)])
def test_replicas_are_managed_only_when_asked(replicas: int | None, expected: object) -> None:
    d = m.build_deployment("q", "prod", parse_spec(BASE), replicas=replicas)
    assert d["spec"].get("replicas", "absent") == expected


def test_negative_replicas_are_a_bug() -> None:
    with pytest.raises(ValueError, match="replicas"):
        m.build_deployment("q", "prod", parse_spec(BASE), replicas=-1)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (BASE, None),
        ({**BASE, "autoscaling": {"enabled": False}}, 1),
        ({**BASE, "autoscaling": {"enabled": False}, "replicas": 4}, 4),
        ({**BASE, "replicas": 4}, None),
    ],
)
def test_managed_replicas(spec: dict[str, Any], expected: int | None) -> None:
    assert m.managed_replicas(parse_spec(spec)) == expected


@pytest.mark.parametrize(
    ("change", "rolls"),
    [
        ({"retry": {"maxAttempts": 9}}, True),
        ({"priorities": {"mode": "weighted"}}, True),
        ({"worker": {**BASE["worker"], "concurrency": 3}}, False),
        ({"autoscaling": {"maxReplicas": 3}}, False),
    ],
)
def test_config_hash_follows_queue_semantics(change: dict[str, Any], rolls: bool) -> None:
    def digest(spec: dict[str, Any]) -> str:
        d = m.build_deployment("q", "prod", parse_spec(spec), replicas=None)
        return str(d["spec"]["template"]["metadata"]["annotations"][m.CONFIG_HASH_ANNOTATION])

    assert (digest(BASE) != digest({**BASE, **change})) is rolls


def test_config_map_holds_the_queue_config() -> None:
    spec = parse_spec(FULL)
    cm = m.build_config_map("telemetry", "prod", spec, owner=OWNER)
    assert cm["metadata"]["name"] == "telemetry-queue-config"
    assert cm["metadata"]["labels"] == m.labels("telemetry")
    assert cm["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    config = QueueConfig.model_validate_json(cm["data"][m.CONFIG_KEY])
    assert config == spec.to_queue_config("telemetry", "prod")
    assert cm["metadata"]["annotations"][m.CONFIG_HASH_ANNOTATION] == m.config_hash(config)
    # Canonical JSON: the same config always serializes (and hashes) the same way.
    assert cm["data"][m.CONFIG_KEY] == json.dumps(
        json.loads(cm["data"][m.CONFIG_KEY]), sort_keys=True, separators=(",", ":")
    )


def test_metrics_service() -> None:
    svc = m.build_metrics_service("telemetry", "prod", parse_spec(FULL), owner=OWNER)
    assert svc["metadata"]["name"] == "telemetry-worker-metrics"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == m.selector_labels("telemetry")
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9200, "targetPort": "metrics", "protocol": "TCP"}
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("telemetry", "telemetry-worker-metrics"),
        ("eu.telemetry", "eu-telemetry-worker-metrics"),
        ("7days", "q-7days-worker-metrics"),
        ("a" * 63, None),
        ("a" * 60 + ".b", None),
    ],
)
def test_service_names_are_dns_labels(name: str, expected: str | None) -> None:
    got = m.metrics_service_name(name)
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", got), got
    if expected is not None:
        assert got == expected
    else:  # truncated with a hash, so that long names stay distinct
        assert got != m.metrics_service_name(name[:-1] + "c")


def test_pdb() -> None:
    pdb = m.build_pdb("telemetry", "prod", parse_spec(BASE), owner=OWNER)
    assert pdb["metadata"]["name"] == "telemetry-worker"
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": m.selector_labels("telemetry")},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


@pytest.mark.parametrize(
    ("inflight", "expected"),
    [
        ({}, {}),
        ({"a": 0, "b": 5, "c": 1}, {"a": 0, "b": 5, "c": 1}),
        ({"a": -3}, {"a": 0}),  # a bogus report is treated as idle, never below idle
        ({"a": 2**40}, {"a": 2**31 - 1}),
    ],
    ids=["none", "idle-lowest", "negative", "int32"],
)
def test_deletion_cost_annotations(inflight: dict[str, int], expected: dict[str, int]) -> None:
    costs = m.deletion_cost_annotations(inflight)
    assert costs == expected
    idle = [p for p, n in inflight.items() if n <= 0]
    busy = [p for p, n in inflight.items() if n > 0]
    assert all(costs[i] < costs[b] for i in idle for b in busy)


def test_owner_ref_from_body() -> None:
    body = {
        "apiVersion": "kubeq.io/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "telemetry", "uid": "6f1c-uid", "namespace": "prod"},
    }
    assert m.OwnerRef.from_body(body) == OWNER


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[s[0] for s in SPECS])
def test_the_deployment_records_the_spec_it_was_built_from(name: str, spec: TaskQueueSpec) -> None:
    """What an operator restarted with a refused spec scales by: the record, read back
    through the same checks as any spec, is the spec and builds the very same Deployment."""
    deployment = m.build_deployment(name, "prod", spec, replicas=None, owner=OWNER)
    raw = m.recorded_spec(deployment, OWNER.uid)
    assert raw is not None
    body = {
        "apiVersion": "kubeq.io/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": raw,
    }
    back = checked_spec(body)
    assert back == spec
    assert m.build_deployment(name, "prod", back, replicas=None, owner=OWNER) == deployment


def test_recording_the_spec_rolls_no_worker() -> None:
    """The record is on the Deployment, not its pod template: a change the workers do not
    see (autoscaling bounds) changes the record and leaves the template alone."""
    wider = parse_spec({**BASE, "autoscaling": {"maxReplicas": 40}})
    before = m.build_deployment("q", "prod", parse_spec(BASE), replicas=None)
    after = m.build_deployment("q", "prod", wider, replicas=None)
    assert after["spec"]["template"] == before["spec"]["template"]
    assert (
        after["metadata"]["annotations"][m.SPEC_ANNOTATION]
        != (before["metadata"]["annotations"][m.SPEC_ANNOTATION])
    )


def _recorded(annotation: object, owners: list[dict[str, Any]]) -> dict[str, Any]:
    annotations = {} if annotation is None else {m.SPEC_ANNOTATION: annotation}
    return {"metadata": {"annotations": annotations, "ownerReferences": owners}}


@pytest.mark.parametrize(
    ("deployment", "why"),
    [
        (_recorded(None, [OWNER.to_manifest()]), "no record (built before specs were recorded)"),
        (_recorded("{not json", [OWNER.to_manifest()]), "not JSON"),
        (_recorded("[1, 2]", [OWNER.to_manifest()]), "not an object"),
        (_recorded(7, [OWNER.to_manifest()]), "not a string"),
        (_recorded("{}", []), "no owner"),
        (_recorded("{}", [{**OWNER.to_manifest(), "uid": "other"}]), "another TaskQueue's"),
        (_recorded("{}", [{**OWNER.to_manifest(), "controller": False}]), "not the controller"),
        (_recorded("{}", ["junk"]), "a mangled owner list"),
        ({}, "no metadata"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_an_unusable_record_is_none(deployment: dict[str, Any], why: str) -> None:
    assert m.recorded_spec(deployment, OWNER.uid) is None, why
    assert m.recorded_spec(_recorded("{}", [OWNER.to_manifest()]), OWNER.uid) == {}
