"""Which Secrets and ConfigMaps a worker pod template needs, and which of them fail."""

from __future__ import annotations

from typing import Any

from kubeq_operator.core.manifests import build_deployment
from kubeq_operator.core.preflight import Reference, problems, references
from kubeq_operator.core.spec import TaskQueueSpec


def spec(**redis: Any) -> TaskQueueSpec:
    return TaskQueueSpec.model_validate(
        {
            "redis": redis or {"url": "redis://r:6379"},
            "worker": {
                "image": "img:1",
                "app": "pkg.mod:app",
                "env": [
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "t"}}},
                    {
                        "name": "MAYBE",
                        "valueFrom": {
                            "secretKeyRef": {"name": "opt", "key": "k", "optional": True}
                        },
                    },
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "m"}}},
                ],
            },
        }
    )


def test_references_come_from_the_built_manifest() -> None:
    manifest = build_deployment(
        "q", "ns", spec(secretRef={"name": "redis", "key": "url"}), replicas=1
    )
    refs = references(manifest)
    assert Reference("Secret", "redis", "url", "env KUBEQ_REDIS_URL of container worker") in refs
    assert Reference("Secret", "api", "t", "env TOKEN of container worker") in refs
    assert Reference("ConfigMap", "cm", "m", "env MODE of container worker") in refs
    assert all(r.name != "opt" for r in refs)  # optional: the user's explicit choice


def test_volume_and_env_from_references() -> None:
    pod = {
        "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "all"}}]}],
        "volumes": [
            {
                "name": "ca",
                "secret": {"secretName": "tls", "items": [{"key": "ca.crt", "path": "x"}]},
            },
            {"name": "whole", "configMap": {"name": "files"}},
            {"name": "skip", "secret": {"secretName": "maybe", "optional": True}},
        ],
    }
    refs = references({"spec": {"template": {"spec": pod}}})
    assert refs == sorted(
        [
            Reference("ConfigMap", "files", None, "volume whole"),
            Reference("Secret", "all", None, "envFrom of container c"),
            Reference("Secret", "tls", "ca.crt", "volume ca"),
        ]
    )


def test_problems_name_the_object_and_key() -> None:
    refs = [
        Reference("Secret", "redis", "url", "env KUBEQ_REDIS_URL of container worker"),
        Reference("Secret", "gone", None, "volume v"),
        Reference("ConfigMap", "cm", "m", "env MODE of container worker"),
    ]
    objects: dict[Any, Any] = {
        ("Secret", "redis"): {"data": {"other": "eA=="}},
        ("Secret", "gone"): None,
        ("ConfigMap", "cm"): {"data": {"m": "1"}},
    }
    assert problems(refs, objects) == [
        'Secret "redis" has no key "url" (env KUBEQ_REDIS_URL of container worker)',
        'Secret "gone" not found (volume v)',
    ]
    objects[("Secret", "redis")] = {"stringData": {"url": "redis://r"}}
    objects[("Secret", "gone")] = {}
    assert problems(refs, objects) == []
