"""Can the worker pods start? The Secrets and ConfigMaps a Deployment's pod template needs.

A pod that references a missing Secret key (env `secretKeyRef`, `envFrom`, a `secret`
volume's items) never starts: the kubelet reports CreateContainerConfigError, and a rolling
update stalls on it while the Deployment looks fine. So the operator reads the references
out of the very manifest it is about to apply (not out of the spec: whatever adds a
reference, the check sees it) and refuses to roll out a template whose references do not
resolve. References marked `optional: true` are the user's explicit choice and skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["Secret", "ConfigMap"]


@dataclass(frozen=True, order=True)
class Reference:
    kind: Kind
    name: str
    key: str | None  # None: the object must exist, any keys
    where: str  # for the message, e.g. "env KUBEQ_REDIS_URL of container worker"


_KEY_REFS: tuple[tuple[str, Kind], ...] = (
    ("secretKeyRef", "Secret"),
    ("configMapKeyRef", "ConfigMap"),
)
_SOURCE_REFS: tuple[tuple[str, Kind], ...] = (
    ("secretRef", "Secret"),
    ("configMapRef", "ConfigMap"),
)
_VOLUME_REFS: tuple[tuple[str, Kind, str], ...] = (
    ("secret", "Secret", "secretName"),
    ("configMap", "ConfigMap", "name"),
)


def _required(ref: Mapping[str, Any]) -> bool:
    return not ref.get("optional", False)


def references(deployment: Mapping[str, Any]) -> list[Reference]:
    """Every non-optional Secret/ConfigMap (key) the pod template refers to (pure)."""
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    out: list[Reference] = []
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    for c in containers:
        cname = c.get("name", "?")
        for env in c.get("env") or []:
            source = env.get("valueFrom") or {}
            where = f"env {env.get('name')} of container {cname}"
            for field, kind in _KEY_REFS:
                ref = source.get(field)
                if ref and _required(ref):
                    out.append(Reference(kind, str(ref.get("name")), str(ref.get("key")), where))
        for src in c.get("envFrom") or []:
            for field, kind in _SOURCE_REFS:
                ref = src.get(field)
                if ref and _required(ref):
                    where = f"envFrom of container {cname}"
                    out.append(Reference(kind, str(ref.get("name")), None, where))
    for vol in pod.get("volumes") or []:
        where = f"volume {vol.get('name')}"
        for field, kind, name_field in _VOLUME_REFS:
            src = vol.get(field)
            if not src or not _required(src):
                continue
            name = str(src.get(name_field))
            items = src.get("items") or []
            if not items:
                out.append(Reference(kind, name, None, where))
            out.extend(Reference(kind, name, str(item.get("key")), where) for item in items)
    return sorted(set(out))


def keys_of(obj: Mapping[str, Any]) -> set[str]:
    """The keys a Secret or ConfigMap holds (both of its data maps)."""
    found: set[str] = set()
    for field in ("data", "stringData", "binaryData"):
        found |= set((obj.get(field) or {}).keys())
    return found


def problems(
    refs: list[Reference], objects: Mapping[tuple[Kind, str], Mapping[str, Any] | None]
) -> list[str]:
    """One sentence per reference that does not resolve, given the objects read (None:
    not found)."""
    out: list[str] = []
    for ref in refs:
        obj = objects.get((ref.kind, ref.name))
        if obj is None:
            out.append(f'{ref.kind} "{ref.name}" not found ({ref.where})')
        elif ref.key is not None and ref.key not in keys_of(obj):
            out.append(f'{ref.kind} "{ref.name}" has no key "{ref.key}" ({ref.where})')
    return list(dict.fromkeys(out))
