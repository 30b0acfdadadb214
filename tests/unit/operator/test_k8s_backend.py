"""Pure parts of the Kubernetes backend: paths, merge patches, drift, pod selection."""

from __future__ import annotations

import json

from kubeq_operator.core.manifests import labels
from kubeq_operator.kube.backend import (
    DEPLOYMENTS,
    LAST_APPLIED_ANNOTATION,
    PODS,
    TASK_QUEUES,
    apply_patch,
    contains,
    owned_pods,
    removed_fields,
    with_last_applied,
)


def test_paths() -> None:
    assert PODS.path("ns") == "/api/v1/namespaces/ns/pods"
    assert DEPLOYMENTS.path("ns", "d") == "/apis/apps/v1/namespaces/ns/deployments/d"
    assert TASK_QUEUES.path("ns", "q", "status") == (
        "/apis/kubeq.io/v1alpha1/namespaces/ns/taskqueues/q/status"
    )
    assert DEPLOYMENTS.path() == "/apis/apps/v1/deployments"


def test_removed_fields() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    new = {"a": 1, "b": {"c": 2}}
    assert removed_fields(old, new) == {"b": {"d": None}, "e": None}


def manifest(**spec: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "spec": dict(spec)}


def test_apply_patch_reasserts_everything_and_removes_dropped_fields() -> None:
    before = manifest(replicas=3, image="a", nodeSelector={"zone": "z1"})
    live = with_last_applied(before)
    live["spec"] = {**live["spec"], "image": "hand-edited", "extra": "kept"}
    patch = apply_patch(manifest(image="b"), live)
    assert patch["spec"] == {"image": "b", "nodeSelector": None}  # replicas is not tracked
    recorded = json.loads(patch["metadata"]["annotations"][LAST_APPLIED_ANNOTATION])
    assert recorded["spec"] == {"image": "b"}


def test_apply_patch_without_history_or_with_garbage() -> None:
    desired = manifest(image="b")
    assert apply_patch(desired, None)["spec"] == {"image": "b"}
    live = {"metadata": {"annotations": {LAST_APPLIED_ANNOTATION: "{not json"}}}
    assert apply_patch(desired, live)["spec"] == {"image": "b"}


def test_contains_tolerates_server_defaults_not_changes() -> None:
    desired = {"spec": {"containers": [{"name": "w", "env": [{"name": "A", "value": "1"}]}]}}
    defaulted = {
        "spec": {
            "containers": [
                {"name": "w", "env": [{"name": "A", "value": "1"}], "imagePullPolicy": "Always"}
            ],
            "dnsPolicy": "ClusterFirst",
        }
    }
    assert contains(defaulted, desired)
    changed = {"spec": {"containers": [{"name": "w", "env": [{"name": "A", "value": "2"}]}]}}
    assert not contains(changed, desired)
    extra_item = {"spec": {"containers": [desired["spec"]["containers"][0], {"name": "x"}]}}
    assert not contains(extra_item, desired)


def test_owned_pods_filters_by_the_selector_labels() -> None:
    mine = {"metadata": {"name": "a", "labels": labels("q")}}
    other = {"metadata": {"name": "b", "labels": labels("other")}}
    bare = {"metadata": {"name": "c"}}
    assert owned_pods([mine, other, bare], "q") == [mine]
