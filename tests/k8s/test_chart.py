"""The Helm chart, rendered and linted by the Helm library (helm-python-sdk), with every
object checked against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), the
TaskQueue CRD, or - for Prometheus Operator kinds - the fields we rely on."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_values_doc import DOC, documented_table, rows, table

from kubeq_operator.core import manifests
from kubeq_operator.core.crd_schema import checked_spec, to_jsonschema
from kubeq_operator.core.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeq"
CRD_SOURCE = ROOT / "crds" / "taskqueue.yaml"
CRD_COPY = CHART / "crds" / "taskqueue.yaml"
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
RELEASE, NAMESPACE = "kq", "kubeq-system"
PROMETHEUS_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterKopfPeering",
}  # fmt: skip
PEERING_KINDS = {"ClusterKopfPeering", "KopfPeering"}
LINT_WARNING = 2  # helm's support.WarningSev; 1 is info ("icon is recommended")


def _example(path: str) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / path).read_text())
    return {"name": body["metadata"]["name"], "spec": body["spec"]}


def _minimal_without_image() -> dict[str, Any]:
    example = _example("minimal.yaml")
    del example["spec"]["worker"]["image"]
    return {**example, "name": "defaulted-image", "namespace": "apps", "labels": {"team": "a"}}


MONITORING = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "interval": "1m", "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
    "grafana": {
        "dashboards": {
            "enabled": True,
            "label": "grafana_dashboard",
            "labelValue": "1",
            "namespace": "monitoring",
            "annotations": {"grafana_folder": "kubeq"},
        }
    },
}
CUSTOM = {
    "fullnameOverride": "queues",
    "operator": {
        "replicas": 2,
        "image": {"repository": "registry.example.com/kq/operator", "tag": "1.2.3"},
        "imagePullSecrets": ["regcred"],
        "logFormat": "text",
        "logLevel": "DEBUG",
        "metricsPort": 9000,
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": 1}},
        "extraEnv": [{"name": "KUBEQ_EXTRA", "value": "yes"}],
        "podLabels": {"team": "platform"},
        "podAnnotations": {"example.com/scrape": "true"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
    },
    "serviceAccount": {"create": False, "name": "existing-sa"},
    "metrics": {"service": {"port": 9001}},
    "workerImage": {"repository": "registry.example.com/kq/worker", "tag": "7.0.0"},
}
HARDENED = {
    "rbac": {"create": True, "secretNamespaces": ["apps", "ml"]},
    "podSecurity": {"exemptNamespaces": ["legacy"], "allowedServiceAccounts": ["workers", "ml/x"]},
    "networkPolicy": {
        "enabled": True,
        "workerNamespaces": ["apps", "ml"],
        "redisPeers": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "redisPorts": [6379, 26379],
        "monitoringNamespace": "monitoring",
    },
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "hardened": HARDENED,
    "namespace-scope": {"watch": {"scope": "namespace"}},
    "namespace-scope-elsewhere": {"watch": {"scope": "namespace", "namespace": "apps"}},
    "monitoring": MONITORING,
    "examples": {"examples": [_example("telemetry.yaml"), _minimal_without_image()]},
    "custom": CUSTOM,
    "everything": {
        **MONITORING,
        **CUSTOM,
        "watch": {"scope": "namespace", "namespace": "apps"},
        "metrics": {**MONITORING["metrics"], **CUSTOM["metrics"]},
        "examples": [_minimal_without_image()],
    },
}


@functools.cache
def _render(name: str) -> tuple[dict[str, Any], ...]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(
            copy.deepcopy(VALUE_SETS[name]), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    docs = [
        d
        for path, text in sorted(out.items())
        if path.endswith(".yaml")
        for d in yaml.safe_load_all(text)
    ]
    return tuple(d for d in docs if d)


def render(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_render(name)))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = of_kind(objects, kind)
    return obj


def chart_crds() -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        return [yaml.safe_load(c["data"]) for c in chart.crds]


# --- lint --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_helm_lint_strict(values: str) -> None:
    result = helm.lint(CHART, copy.deepcopy(VALUE_SETS[values]), strict=True, namespace=NAMESPACE)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] >= LINT_WARNING] == []


def test_helm_lint_reports_template_errors() -> None:
    # The lint check above is not vacuous: bad values do produce lint errors.
    result = helm.lint(CHART, {"operator": {"replicas": "two"}}, strict=True)
    assert any("replicas" in e for e in result["errors"])


# --- every object is valid ---------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "any": {"type": "boolean"},
        "matchNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "minProperties": 1,
}


def _endpoint() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["port"],
        "properties": {
            "port": {"type": "string", "minLength": 1},
            "path": {"type": "string", "pattern": "^/"},
            "interval": _DURATION,
        },
    }


def _monitoring_schema(spec: dict[str, Any]) -> dict[str, Any]:
    """The subset of the prometheus-operator CRD schema our objects use, unknown fields rejected."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": spec,
        },
    }


_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": "string", "minLength": 1},
        "for": _DURATION,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
MONITORING_SCHEMAS = {
    "ServiceMonitor": _monitoring_schema(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "endpoints": {"type": "array", "minItems": 1, "items": _endpoint()},
            },
        }
    ),
    "PodMonitor": _monitoring_schema(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _endpoint()},
            },
        }
    ),
    "PrometheusRule": _monitoring_schema(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                    },
                }
            },
        }
    ),
}


def validate_object(obj: dict[str, Any], version: str) -> None:
    kind = obj["kind"]
    if kind in PROMETHEUS_KINDS:
        jsonschema.validate(obj, MONITORING_SCHEMAS[kind])
    elif kind == "TaskQueue":
        checked_spec(obj, crd_file=CRD_COPY)  # raises InvalidSpec listing the problems
    elif kind in PEERING_KINDS:  # against the chart's own copy of kopf's peering CRDs
        crd = next(c for c in chart_crds() if c["spec"]["names"]["kind"] == kind)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.validate(obj, to_jsonschema(schema))
    else:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_every_rendered_object_is_valid(values: str, version: str) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            validate_object(obj, version)
        except Exception as exc:
            pytest.fail(f"{values}: {name} is invalid for Kubernetes {version}: {exc}")
        # Namespaced objects carry their namespace, so rendered output applies as it is.
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace"), name
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubeq", name


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_chart_crds_are_valid(version: str) -> None:
    crds = chart_crds()
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "taskqueues.kubeq.io",
    ]  # fmt: skip
    for crd in crds:
        kubernetes_validate.validate(crd, version, strict=True)


def test_monitoring_schemas_reject_what_prometheus_operator_would() -> None:
    monitor = one(render("monitoring"), "PodMonitor")
    del monitor["spec"]["podMetricsEndpoints"][0]["port"]
    with pytest.raises(jsonschema.ValidationError):
        validate_object(monitor, K8S_VERSIONS[0])
    rule = one(render("monitoring"), "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(rule, K8S_VERSIONS[0])


# --- what gets rendered ------------------------------------------------------------------


def _kinds(values: str) -> list[str]:
    return sorted(o["kind"] for o in render(values))


def test_default_values_render_the_operator_only() -> None:
    assert _kinds("default") == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount",
    ]  # fmt: skip


def test_monitoring_values_add_monitors_rules_and_dashboards() -> None:
    kinds = _kinds("monitoring")
    assert kinds.count("ConfigMap") == len(list((CHART / "dashboards").glob("*.json"))) == 2
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= set(kinds)


# --- the operator Deployment -------------------------------------------------------------


def _operator(values: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    deployment = one(render(values), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return deployment, pod, container


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_operator_security_context(values: str) -> None:
    _, pod, container = _operator(values)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # /tmp (HOME and TMPDIR of the image) is the only writable place: an emptyDir.
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_operator_probes_and_ports_line_up(values: str) -> None:
    objects = render(values)
    _, pod, container = _operator(values)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(ports) == {"metrics", "health"}
    assert env["KUBEQ_OPERATOR_METRICS_PORT"] == str(ports["metrics"])
    # The probes reach kopf's liveness endpoint, not prometheus_client (which answers any path).
    assert env["KUBEQ_OPERATOR_HEALTH_PORT"] == str(ports["health"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"]
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pod["serviceAccountName"] == _service_account_name(values)


def _service_account_name(values: str) -> str:
    custom = VALUE_SETS[values].get("serviceAccount", {}).get("name")
    return custom or f"{RELEASE}-kubeq-operator"


def test_custom_values_reach_the_deployment() -> None:
    objects = render("custom")
    deployment, pod, container = _operator("custom")
    assert deployment["metadata"]["name"] == "queues-operator"
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "registry.example.com/kq/operator:1.2.3"
    # Helm merges maps with the defaults: the memory limit stays, cpu is added.
    assert container["resources"] == {
        "requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "256Mi"},
    }  # fmt: skip
    assert container["ports"][0]["containerPort"] == 9000
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEQ_LOG_FORMAT"] == "text"
    assert env["KUBEQ_LOG_LEVEL"] == "DEBUG"
    assert env["KUBEQ_EXTRA"] == "yes"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod[key] == CUSTOM["operator"][key]
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    assert not of_kind(objects, "ServiceAccount")  # serviceAccount.create: false
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == 9001
    (binding,) = of_kind(objects, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "existing-sa"


def test_default_image_is_the_chart_app_version() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    _, _, container = _operator("default")
    assert container["image"] == f"ghcr.io/kubeq/kubeq-operator:{app_version}"
    assert container["imagePullPolicy"] == "IfNotPresent"


# --- RBAC --------------------------------------------------------------------------------

# (apiGroup, resource) → verbs the operator needs; nothing else is granted.
NAMESPACED_GRANTS = {
    ("kubeq.io", "taskqueues"): {"get", "list", "watch", "patch"},
    ("kubeq.io", "taskqueues/status"): {"get", "patch"},
    ("kubeq.io", "taskqueues/scale"): {"get", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
}
CLUSTER_GRANTS = {
    **NAMESPACED_GRANTS,
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
}


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames")
        assert not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_rbac_has_no_wildcards(values: str) -> None:
    for role in (o for o in render(values) if o["kind"] in {"Role", "ClusterRole"}):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[field]), (role["kind"], rule)


def test_cluster_scope_grants_exactly_what_the_operator_needs() -> None:
    objects = render("default")
    role, binding = one(objects, "ClusterRole"), one(objects, "ClusterRoleBinding")
    assert grants(role) == CLUSTER_GRANTS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-kubeq-operator", "namespace": NAMESPACE}
    ]
    (_, _, container) = _operator("default")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEQ_OPERATOR_NAMESPACE"] == ""  # cluster-wide


@pytest.mark.parametrize(
    ("values", "watched"),
    [("namespace-scope", NAMESPACE), ("namespace-scope-elsewhere", "apps"), ("everything", "apps")],
)
def test_namespace_scope_renders_roles_not_cluster_roles(values: str, watched: str) -> None:
    objects = render(values)
    assert not of_kind(objects, "ClusterRole")
    assert not of_kind(objects, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")}
    assert grants(roles[watched]) == NAMESPACED_GRANTS
    if watched != NAMESPACE:  # its own namespace: Events only
        assert set(grants(roles[NAMESPACE])) == {("", "events"), ("events.k8s.io", "events")}
    assert set(roles) == {watched, NAMESPACE}
    bindings = of_kind(objects, "RoleBinding")
    assert len(bindings) == len(roles)
    for binding in bindings:
        role = roles[binding["metadata"]["namespace"]]
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    _, _, container = _operator(values)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEQ_OPERATOR_NAMESPACE"] == watched


def test_secret_access_can_be_limited_to_named_namespaces() -> None:
    objects = render("hardened")
    cluster = grants(one(objects, "ClusterRole"))
    assert ("", "secrets") not in cluster
    assert cluster == {k: v for k, v in CLUSTER_GRANTS.items() if k != ("", "secrets")}
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")}
    assert set(roles) == {"apps", "ml"}
    for role in roles.values():
        assert grants(role) == {("", "secrets"): {"get"}}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(objects, "RoleBinding")}
    assert set(bindings) == {"apps", "ml"}
    for ns, binding in bindings.items():
        assert binding["roleRef"]["name"] == roles[ns]["metadata"]["name"]
        assert binding["subjects"][0]["namespace"] == NAMESPACE


def test_no_role_grants_listing_or_watching_secrets() -> None:
    for values in VALUE_SETS:
        for role in (o for o in render(values) if o["kind"] in {"Role", "ClusterRole"}):
            assert grants(role).get(("", "secrets"), {"get"}) == {"get"}, values


def test_pod_security_values_reach_the_operator_settings() -> None:
    from kubeq_operator.core.pod_security import PodPolicy
    from kubeq_operator.kube.settings import OperatorSettings

    for values, policy in (
        ("default", PodPolicy()),
        (
            "hardened",
            PodPolicy(frozenset({"legacy"}), frozenset({"workers", "ml/x"})),
        ),
    ):
        _, _, container = _operator(values)
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        prefix = "KUBEQ_OPERATOR_"
        settings = OperatorSettings(
            **{k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
        )
        assert settings.pod_policy() == policy


def test_the_operator_pod_meets_the_restricted_profile() -> None:
    from kubeq_operator.core.pod_security import restricted_problems

    for values in VALUE_SETS:
        deployment = one(render(values), "Deployment")
        assert restricted_problems(deployment["spec"]["template"]["spec"]) == [], values


def test_network_policy_confines_the_worker_pods_the_operator_builds() -> None:
    assert not of_kind(render("default"), "NetworkPolicy")
    policies = {p["metadata"]["namespace"]: p for p in of_kind(render("hardened"), "NetworkPolicy")}
    assert set(policies) == {"apps", "ml"}
    pod_labels = _sample_worker_deployment()["spec"]["template"]["metadata"]["labels"]
    for policy in policies.values():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        selector = spec["podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        (ingress,) = spec["ingress"]
        assert ingress["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
        assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        dns, redis = spec["egress"]
        assert {p["port"] for p in dns["ports"]} == {53}
        assert redis["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
        assert [p["port"] for p in redis["ports"]] == [6379, 26379]
    # The worker's metrics port is the one the policy names.
    container = _sample_worker_deployment()["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["name"] == "metrics"


def test_network_policy_without_monitoring_denies_all_ingress() -> None:
    values = copy.deepcopy(HARDENED)
    values["networkPolicy"]["monitoringNamespace"] = ""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = [
        d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text)
    ]
    policies = of_kind([d for d in docs if d], "NetworkPolicy")
    assert len(policies) == 2
    for policy in policies:
        assert policy["spec"]["ingress"] == []


# --- monitoring --------------------------------------------------------------------------


def _sample_worker_deployment() -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "telemetry.yaml").read_text())
    return manifests.build_deployment("telemetry", "apps", parse_spec(body["spec"]), replicas=1)


def test_pod_monitor_selects_the_worker_pods_the_operator_builds() -> None:
    monitor = one(render("monitoring"), "PodMonitor")
    assert monitor["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "kubeq-worker"}
    }
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["metadata"]["labels"]["release"] == "prom"
    template = _sample_worker_deployment()["spec"]["template"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    )
    port_names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    # With namespace scope, only the watched namespace.
    scoped = one(render("everything"), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}


def test_service_monitor_selects_the_operator_service() -> None:
    objects = render("monitoring")
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["interval"] == "1m"
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_prometheus_rule_is_the_rules_file() -> None:
    rule = one(render("monitoring"), "PrometheusRule")
    source = yaml.safe_load((CHART / "rules" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_dashboard_config_maps_carry_the_dashboard_files() -> None:
    maps = of_kind(render("monitoring"), "ConfigMap")
    files = {p.name: json.loads(p.read_text()) for p in (CHART / "dashboards").glob("*.json")}
    seen = {}
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "kubeq"}
        (key,) = cm["data"]
        seen[key] = json.loads(cm["data"][key])
    assert seen == files


def test_dashboard_label_is_configurable() -> None:
    values = copy.deepcopy(MONITORING)
    values["grafana"]["dashboards"].update(label="dashboards", labelValue="kubeq")
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    maps = [d for d in yaml.safe_load_all(out["kubeq/templates/dashboards.yaml"]) if d]
    assert len(maps) == 2
    assert all(m["metadata"]["labels"]["dashboards"] == "kubeq" for m in maps)
    assert not any("grafana_dashboard" in m["metadata"]["labels"] for m in maps)


# --- example TaskQueues ------------------------------------------------------------------


def test_example_task_queues_are_rendered_and_valid() -> None:
    queues = {q["metadata"]["name"]: q for q in of_kind(render("examples"), "TaskQueue")}
    assert set(queues) == {"telemetry", "defaulted-image"}
    telemetry = queues["telemetry"]
    assert telemetry["metadata"]["namespace"] == NAMESPACE
    assert telemetry["spec"] == _example("telemetry.yaml")["spec"]  # rendered verbatim
    defaulted = queues["defaulted-image"]
    assert defaulted["metadata"]["namespace"] == "apps"
    assert defaulted["metadata"]["labels"]["team"] == "a"
    assert defaulted["spec"]["worker"]["image"] == "ghcr.io/kubeq/kubeq-worker:0.1.0"
    assert defaulted["spec"]["worker"]["app"] == _example("minimal.yaml")["spec"]["worker"]["app"]
    for queue in queues.values():
        checked_spec(queue, crd_file=CRD_COPY)
    (custom,) = of_kind(render("everything"), "TaskQueue")
    assert custom["spec"]["worker"]["image"] == "registry.example.com/kq/worker:7.0.0"


def test_default_worker_image_is_the_one_the_examples_use() -> None:
    queues = {q["metadata"]["name"]: q for q in of_kind(render("examples"), "TaskQueue")}
    defaulted = queues["defaulted-image"]["spec"]["worker"]["image"]
    assert defaulted == _example("telemetry.yaml")["spec"]["worker"]["image"]


# --- values schema -----------------------------------------------------------------------

BAD_VALUES = [
    pytest.param({"bogus": 1}, "additional properties 'bogus'", id="unknown-top-level-key"),
    pytest.param({"operator": {"imag": {}}}, "properties 'imag'", id="unknown-nested-key"),
    pytest.param({"operator": {"replicas": "2"}}, "/operator/replicas", id="wrong-type"),
    pytest.param({"operator": {"replicas": 0}}, "/operator/replicas", id="below-minimum"),
    pytest.param({"operator": {"metricsPort": 80}}, "/operator/metricsPort", id="privileged-port"),
    pytest.param({"watch": {"scope": "everywhere"}}, "/watch/scope", id="bad-scope-enum"),
    pytest.param({"operator": {"logFormat": "xml"}}, "/operator/logFormat", id="bad-log-enum"),
    pytest.param(
        {"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy",
        id="bad-pull-policy",
    ),
    pytest.param({"watch": {"namespace": "apps"}}, "/watch/namespace", id="namespace-with-cluster"),
    pytest.param({"serviceAccount": {"create": False}}, "/serviceAccount/name", id="no-sa-name"),
    pytest.param(
        {"metrics": {"podMonitor": {"interval": "often"}}}, "/metrics/podMonitor/interval",
        id="bad-interval",
    ),
    pytest.param({"examples": [{"name": "x"}]}, "/examples/0", id="example-without-spec"),
    pytest.param(
        {"examples": [{"name": "Bad_Name", "spec": {}}]}, "/examples/0/name", id="bad-example-name"
    ),
    pytest.param({"grafana": {"dashboards": {"enabled": "yes"}}}, "/grafana/dashboards/enabled",
                 id="string-for-bool"),
    pytest.param({"networkPolicy": {"enabled": True}}, "/networkPolicy",
                 id="network-policy-without-namespaces"),
    pytest.param({"podSecurity": {"allowedServiceAccounts": ["Bad Name"]}},
                 "/podSecurity/allowedServiceAccounts/0", id="bad-service-account"),
]  # fmt: skip


@pytest.mark.parametrize(("values", "where"), BAD_VALUES)
def test_values_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
            chart.validate_schema(values)
        with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_values_schema_accepts_the_value_sets(values: str) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(copy.deepcopy(VALUE_SETS[values]))


def test_every_schema_level_is_closed() -> None:
    def walk(schema: dict[str, Any], path: str) -> None:
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{path or '/'} is open"
            for key, sub in schema["properties"].items():
                walk(sub, f"{path}/{key}")
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{path}/items")

    walk(json.loads((CHART / "values.schema.json").read_text()), "")


# --- CRD copy, versions, docs ------------------------------------------------------------


def test_chart_crd_is_identical_to_the_source_crd() -> None:
    assert CRD_SOURCE.is_file(), "crds/taskqueue.yaml (the source of truth) is missing"
    assert CRD_COPY.read_bytes() == CRD_SOURCE.read_bytes(), (
        "charts/kubeq/crds/taskqueue.yaml differs from crds/taskqueue.yaml, the source of "
        "truth: run `cp crds/taskqueue.yaml charts/kubeq/crds/taskqueue.yaml`"
    )
    (crd,) = [c for c in chart_crds() if c["spec"]["group"] == "kubeq.io"]
    assert crd == yaml.safe_load(CRD_SOURCE.read_text())  # what Helm installs


def test_chart_versions_follow_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', project, re.M)
    assert version is not None
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == version.group(1)


def test_values_reference_in_docs_is_current() -> None:
    assert documented_table(DOC.read_text()) == table(), (
        "docs/kubernetes.md's values table is stale: run "
        "`.venv/bin/python tests/k8s/chart_values_doc.py --write`"
    )


def test_values_reference_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = {key for key, *_ in rows(schema, values)}
    assert set(values) <= {key.split(".")[0] for key in documented}

    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node and f"{prefix}" not in documented:
            return [
                leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}.{k}".lstrip("."))
            ]
        return [prefix]

    assert [leaf for leaf in leaves(values, "") if leaf not in documented] == []


@pytest.mark.parametrize(
    ("values", "scope"), [("default", "every namespace"), ("everything", "apps")]
)
def test_notes_say_what_was_installed(values: str, scope: str) -> None:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(VALUE_SETS[values], name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = out["kubeq/templates/NOTES.txt"]
    deployment = one(render(values), "Deployment")["metadata"]["name"]
    assert f"rollout status deploy/{deployment}" in notes
    assert scope in notes


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ({}, None),
        ({"operator": {"replicas": 2}}, "ClusterKopfPeering"),
        ({"operator": {"replicas": 3}, "watch": {"scope": "namespace"}}, "KopfPeering"),
    ],
)
def test_one_replica_runs_standalone_and_several_share_a_peering(
    values: dict[str, Any], kind: str | None
) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = [
        d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text)
        if d
    ]  # fmt: skip
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    peerings = [o for o in objects if o["kind"] in PEERING_KINDS]
    if kind is None:
        # Mandatory peering without its CRD and object would pause kopf: run standalone.
        assert env["KUBEQ_OPERATOR_STANDALONE"] == "true"
        assert peerings == []
    else:
        assert env["KUBEQ_OPERATOR_STANDALONE"] == "false"
        (peering,) = peerings
        assert peering["kind"] == kind
        assert peering["metadata"]["name"] == env["KUBEQ_OPERATOR_PEERING_NAME"]
        # The takeover time: the chart's value reaches the operator (default 15 s).
        assert env["KUBEQ_OPERATOR_PEERING_LIFETIME_SECONDS"] == "15"


# --- the optional dashboard (issue 13) ---------------------------------------------------

DASHBOARD = {
    "dashboard": {
        "enabled": True,
        "queue": "telemetry",
        "namespace": "apps",
        "also": ["ml/train"],
        "redisUrlSecret": {"name": "kubeq-viewer", "key": "url"},
        "tokenSecret": {"name": "kubeq-dashboard-token", "key": "token"},
    }
}


def _render_values(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(
            copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return [
        d
        for path, text in sorted(out.items())
        if path.endswith(".yaml")
        for d in yaml.safe_load_all(text)
        if d
    ]


def _dashboard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        o
        for o in of_kind(objects, "Deployment")
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboard"
    ]
    return deployment


def test_the_dashboard_is_off_by_default() -> None:
    for values in VALUE_SETS:
        assert len(of_kind(render(values), "Deployment")) == 1, values


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_dashboard_renders_valid_restricted_objects(version: str) -> None:
    from kubeq_operator.core.pod_security import restricted_problems

    result = helm.lint(CHART, copy.deepcopy(DASHBOARD), strict=True, namespace=NAMESPACE)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] >= LINT_WARNING] == []
    objects = _render_values(DASHBOARD)
    for obj in objects:
        validate_object(obj, version)
    deployment = _dashboard(objects)
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_problems(pod) == []
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["command"] == ["kubeq"]
    assert container["args"] == [
        "dashboard",
        "--host=0.0.0.0",
        "--port=8480",
        "--queue=telemetry",
        "--namespace=apps",
        "--also=ml/train",
    ]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {
        "KUBEQ_REDIS_URL": {"name": "kubeq-viewer", "key": "url"},
        "KUBEQ_DASHBOARD_TOKEN": {"name": "kubeq-dashboard-token", "key": "token"},
    }
    services = [
        s for s in of_kind(objects, "Service") if s["metadata"]["name"].endswith("-dashboard")
    ]
    (service,) = services
    assert service["spec"]["type"] == "ClusterIP"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_a_dashboard_without_a_token_secret_is_read_only_and_needs_a_redis_secret() -> None:
    values = copy.deepcopy(DASHBOARD)
    values["dashboard"]["tokenSecret"]["name"] = ""
    (container,) = _dashboard(_render_values(values))["spec"]["template"]["spec"]["containers"]
    assert [e["name"] for e in container["env"]] == ["KUBEQ_REDIS_URL"]
    assert "--namespace=apps" in container["args"]
    values["dashboard"]["redisUrlSecret"]["name"] = ""
    with pytest.raises(Exception, match=r"dashboard\.redisUrlSecret\.name is required"):
        _render_values(values)
    with pytest.raises(Exception, match="dashboard"):
        _render_values({"dashboard": {"enabled": True, "port": 80}})  # schema: port >= 1024
