"""What the operator builds meets the "restricted" Pod Security Standard; every way a
TaskQueue author could break it through podTemplate is caught on the built Deployment.

The attacks follow the field list of the Pod Security Standards document (baseline and
restricted policies), one per control.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubeq_operator.core import manifests as m
from kubeq_operator.core.pod_security import PodPolicy, policy_problems, restricted_problems
from kubeq_operator.core.spec import parse_spec
from kubeq_operator.kube.settings import OperatorSettings

BASE: dict[str, Any] = {
    "redis": {"url": "redis://redis:6379/0"},
    "worker": {"image": "img:1", "app": "pkg.mod:app"},
}
STRICT = PodPolicy()


def build(pod_template: dict[str, Any] | None = None, ns: str = "apps") -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    if pod_template is not None:
        spec["worker"]["podTemplate"] = pod_template
    return m.build_deployment("q", ns, parse_spec(spec), replicas=None)


def test_the_default_deployment_meets_the_restricted_profile() -> None:
    d = build()
    pod = d["spec"]["template"]["spec"]
    assert restricted_problems(pod) == []
    assert policy_problems(d, "apps", STRICT) == []


def test_tls_and_harmless_overrides_still_meet_it() -> None:
    spec = copy.deepcopy(BASE)
    spec["redis"]["tls"] = {
        "enabled": True,
        "caSecretRef": {"name": "ca"},
        "clientCertSecretRef": {"name": "c"},
    }
    spec["worker"]["podTemplate"] = {
        "securityContext": {"runAsUser": 2000, "runAsGroup": 2000},
        "containerSecurityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}},
        "volumes": [{"name": "cfg", "configMap": {"name": "x"}}],
    }
    d = m.build_deployment("q", "apps", parse_spec(spec), replicas=None)
    assert policy_problems(d, "apps", STRICT) == []


# One attack per control of the Pod Security Standards (baseline, then restricted).
ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "host-process": (
        {"containerSecurityContext": {"windowsOptions": {"hostProcess": True}}},
        "hostProcess",
    ),
    "host-path": (
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        "type hostPath is not allowed",
    ),
    "privileged": ({"containerSecurityContext": {"privileged": True}}, "privileged"),
    "capabilities-added": (
        {"containerSecurityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
        "capabilities.add",
    ),
    "capabilities-not-dropped": (
        {"containerSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
        "must include ALL",
    ),
    "selinux-type": (
        {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
        "seLinuxOptions",
    ),
    "selinux-user": (
        {"containerSecurityContext": {"seLinuxOptions": {"user": "root"}}},
        "seLinuxOptions",
    ),
    "proc-mount": ({"containerSecurityContext": {"procMount": "Unmasked"}}, "procMount"),
    "seccomp-unconfined-pod": (
        {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        "seccompProfile",
    ),
    "seccomp-unconfined-container": (
        {"containerSecurityContext": {"seccompProfile": {"type": "Unconfined"}}},
        "seccompProfile",
    ),
    "apparmor-field": (
        {"containerSecurityContext": {"appArmorProfile": {"type": "Unconfined"}}},
        "appArmorProfile",
    ),
    "apparmor-annotation": (
        {"annotations": {"container.apparmor.security.beta.kubernetes.io/worker": "unconfined"}},
        "AppArmor",
    ),
    "unsafe-sysctl": (
        {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
        "safe sysctl",
    ),
    "privilege-escalation": (
        {"containerSecurityContext": {"allowPrivilegeEscalation": True}},
        "allowPrivilegeEscalation",
    ),
    "run-as-root-user": ({"securityContext": {"runAsUser": 0}}, "runAsUser"),
    "run-as-root-container": ({"containerSecurityContext": {"runAsUser": 0}}, "runAsUser"),
    "run-as-non-root-off": (
        {"containerSecurityContext": {"runAsNonRoot": False}},
        "runAsNonRoot",
    ),
    "volume-type": (
        {"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]},
        "type nfs is not allowed",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_restricted_control_is_enforced(attack: str) -> None:
    template, expected = ATTACKS[attack]
    problems = policy_problems(build(template), "apps", STRICT)
    assert problems, attack
    assert any(expected in p for p in problems), problems
    assert all("Pod Security Standard 'restricted'" in p for p in problems)


@pytest.mark.parametrize("field", ["hostNetwork", "hostPID", "hostIPC"])
def test_host_namespaces_are_refused(field: str) -> None:
    d = build()
    d["spec"]["template"]["spec"][field] = True  # not reachable through the CRD: checked anyway
    assert any(field in p for p in policy_problems(d, "apps", STRICT))


def test_host_ports_are_refused() -> None:
    d = build()
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"] = 9100
    assert any("hostPort" in p for p in policy_problems(d, "apps", STRICT))


def test_an_exempt_namespace_may_break_the_profile_but_not_the_account_list() -> None:
    policy = PodPolicy(exempt_namespaces=frozenset({"gpu"}))
    privileged = {"containerSecurityContext": {"privileged": True}}
    assert policy_problems(build(privileged, ns="gpu"), "gpu", policy) == []
    assert policy_problems(build(privileged, ns="apps"), "apps", policy)
    sa = policy_problems(build({"serviceAccountName": "admin"}, ns="gpu"), "gpu", policy)
    assert len(sa) == 1
    assert "serviceAccountName" in sa[0]


def test_service_accounts_are_limited_to_the_allowed_list() -> None:
    policy = PodPolicy(service_accounts=frozenset({"workers", "ml/trainer"}))
    assert policy_problems(build({"serviceAccountName": "default"}), "apps", policy) == []
    assert policy_problems(build({"serviceAccountName": "workers"}), "apps", policy) == []
    assert policy_problems(build({"serviceAccountName": "trainer"}, ns="ml"), "ml", policy) == []
    assert policy_problems(build({"serviceAccountName": "trainer"}), "apps", policy)
    assert policy_problems(build({"serviceAccountName": "cluster-admin"}), "apps", policy)


def test_operator_settings_carry_the_policy() -> None:
    settings = OperatorSettings(
        pod_security_exempt_namespaces="gpu, legacy", allowed_service_accounts="workers,ml/x"
    )
    assert settings.pod_policy() == PodPolicy(
        frozenset({"gpu", "legacy"}), frozenset({"workers", "ml/x"})
    )
