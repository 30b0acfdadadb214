"""What the operator may build: the Kubernetes "restricted" Pod Security Standard, and the
service accounts the cluster admin allows. Pure checks of a built pod spec.

The checks read the pod spec the operator is about to apply (after every podTemplate
override is merged), not the spec fields that led to it: whatever combination of overrides
a TaskQueue author writes, what reaches the API server is what was checked. Each rule
follows the field list of the Pod Security Standards document
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), baseline and
restricted, as of Kubernetes 1.30.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeq.text import printable

# Baseline: capabilities a container may add (restricted narrows it to NET_BIND_SERVICE).
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# Restricted: the only volume types.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _containers(pod: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(_list(pod.get(kind))):
            yield f"{kind}[{i}]", _map(c)


def _security_context_problems(where: str, sc: Mapping[str, Any]) -> list[str]:
    """Rules that apply to a pod's and to each container's securityContext alike."""
    out = []
    se = _map(sc.get("seLinuxOptions"))
    if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
        out.append(f"{where}.seLinuxOptions: only the container_* types, no user or role")
    if _map(sc.get("windowsOptions")).get("hostProcess"):
        out.append(f"{where}.windowsOptions.hostProcess: must not be true")
    if sc.get("runAsUser") == 0:
        out.append(f"{where}.runAsUser: must not be 0 (root)")
    if _map(sc.get("appArmorProfile")).get("type") == "Unconfined":
        out.append(f"{where}.appArmorProfile: must not be Unconfined")
    seccomp = _map(sc.get("seccompProfile")).get("type")
    if seccomp is not None and seccomp not in SECCOMP_TYPES:
        out.append(f"{where}.seccompProfile.type: must be RuntimeDefault or Localhost")
    return out


def restricted_problems(
    pod: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> list[str]:
    """Every way the pod spec breaks the "restricted" profile (empty: it meets it)."""
    out: list[str] = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            out.append(f"{host}: must not be true")
    psc = _map(pod.get("securityContext"))
    out += _security_context_problems("securityContext", psc)
    for sysctl in _list(psc.get("sysctls")):
        name = _map(sysctl).get("name")
        if name not in SAFE_SYSCTLS:
            out.append(f"securityContext.sysctls: {name!r} is not a safe sysctl")
    for i, volume in enumerate(_list(pod.get("volumes"))):
        kinds = [k for k in _map(volume) if k != "name"]
        bad = [k for k in kinds if k not in RESTRICTED_VOLUMES]
        if bad:
            out.append(f"volumes[{i}]: type {bad[0]} is not allowed (e.g. no hostPath)")
    for key, value in (annotations or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"annotations[{key}]: AppArmor must be runtime/default or localhost/*")
    for where, c in _containers(pod):
        sc = _map(c.get("securityContext"))
        out += _security_context_problems(f"{where}.securityContext", sc)
        if sc.get("privileged"):
            out.append(f"{where}.securityContext.privileged: must not be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}.securityContext.allowPrivilegeEscalation: must be false")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}.securityContext.procMount: must be Default")
        caps = _map(sc.get("capabilities"))
        if "ALL" not in _list(caps.get("drop")):
            out.append(f"{where}.securityContext.capabilities.drop: must include ALL")
        added = [cap for cap in _list(caps.get("add")) if cap not in RESTRICTED_CAPABILITIES]
        if added:
            out.append(f"{where}.securityContext.capabilities.add: {added} not allowed")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{where}: runAsNonRoot must be true (pod or container)")
        seccomp = _map(sc.get("seccompProfile")).get("type") or _map(psc.get("seccompProfile")).get(
            "type"
        )
        if seccomp not in SECCOMP_TYPES:
            out.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        for j, port in enumerate(_list(c.get("ports"))):
            if _map(port).get("hostPort"):
                out.append(f"{where}.ports[{j}].hostPort: must not be set")
    return out


@dataclass(frozen=True)
class PodPolicy:
    """What the cluster admin allows TaskQueue authors (chart values → operator settings)."""

    #: namespaces whose worker pods may break the restricted profile (explicit opt-out)
    exempt_namespaces: frozenset[str] = frozenset()
    #: service accounts worker pods may use: "name" (any namespace) or "namespace/name";
    #: the namespace's "default" account is always allowed
    service_accounts: frozenset[str] = field(default_factory=frozenset)

    def allows_service_account(self, namespace: str, name: str | None) -> bool:
        if name in (None, "default"):
            return True
        return name in self.service_accounts or f"{namespace}/{name}" in self.service_accounts


def policy_problems(deployment: Mapping[str, Any], namespace: str, policy: PodPolicy) -> list[str]:
    """Why the operator must not apply this worker Deployment (empty: it may)."""
    template = _map(_map(deployment.get("spec")).get("template"))
    pod = _map(template.get("spec"))
    annotations = _map(_map(template.get("metadata")).get("annotations"))
    out: list[str] = []
    account = pod.get("serviceAccountName")
    if not policy.allows_service_account(namespace, account):
        out.append(
            f"spec.worker.podTemplate.serviceAccountName: {printable(account)!r} is not in the "
            "operator's allowed list (chart value podSecurity.allowedServiceAccounts)"
        )
    if namespace not in policy.exempt_namespaces:
        out += [
            f"pod template {p} (Pod Security Standard 'restricted')"
            for p in restricted_problems(pod, annotations)
        ]
    return out


def parse_names(items: Sequence[str] | str) -> frozenset[str]:
    """A set from a list or a comma-separated string (as environment variables carry it)."""
    raw = items.split(",") if isinstance(items, str) else items
    return frozenset(s.strip() for s in raw if s.strip())
