"""Every example is a valid TaskQueue (schema as the API server applies it, and the models);
deliberately bad ones are rejected with the right path. Also covers the CRD → JSON Schema
translation the examples are checked with."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubeq_operator.core.crd_schema import (
    apply_defaults,
    checked_spec,
    openapi_schema,
    to_jsonschema,
    validate_resource,
)
from kubeq_operator.core.errors import InvalidSpec
from kubeq_operator.core.spec import parse_spec

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _task_queues(path: Path) -> list[dict[str, Any]]:
    return [d for d in _documents(path) if d["kind"] == "TaskQueue"]


def test_the_examples_are_there() -> None:
    assert {p.name for p in EXAMPLES} >= {"telemetry.yaml", "minimal.yaml", "scale-to-zero.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_task_queue(path: Path) -> None:
    queues = _task_queues(path)
    assert queues, f"{path.name} has no TaskQueue"
    for body in queues:
        assert body["apiVersion"] == "kubeq.io/v1alpha1"
        # As the API server would see it: defaulted, then validated, unknown fields rejected.
        defaulted = apply_defaults(openapi_schema(), body)
        assert validate_resource(defaulted) == []
        spec = parse_spec(copy.deepcopy(body["spec"]))
        assert spec == parse_spec(defaulted["spec"]) == checked_spec(body)
        spec.to_queue_config(body["metadata"]["name"], "default")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_other_objects_in_examples_are_valid_kubernetes(path: Path, version: str) -> None:
    for doc in _documents(path):
        if doc["kind"] != "TaskQueue":
            kubernetes_validate.validate(doc, version, strict=True)


def test_telemetry_example_is_the_demo_queue() -> None:
    (body,) = _task_queues(ROOT / "examples" / "telemetry.yaml")
    spec = parse_spec(body["spec"])
    assert body["metadata"]["name"] == "telemetry"
    assert [lv.name for lv in spec.priorities.levels] == ["critical", "default", "bulk"]
    a = spec.autoscaling
    assert (a.enabled, a.min_replicas, a.max_replicas, a.target_backlog_per_replica) == (
        True,
        1,
        8,
        200,
    )
    assert a.scale_down_stabilization_seconds <= 10
    assert a.poll_interval_seconds == 1
    assert spec.worker.image == "ghcr.io/kubeq/kubeq-worker:0.1.0"
    assert spec.worker.app == "kubeq.examples.telemetry:app"


def test_scale_to_zero_example_can_reach_zero() -> None:
    (body,) = _task_queues(ROOT / "examples" / "scale-to-zero.yaml")
    spec = parse_spec(body["spec"])
    assert spec.autoscaling.min_replicas == 0
    assert spec.redis.secret_ref is not None
    secrets = [
        d for d in _documents(ROOT / "examples" / "scale-to-zero.yaml") if d["kind"] == "Secret"
    ]
    assert {s["metadata"]["name"] for s in secrets} == {spec.redis.secret_ref.name}


def _bad(path: str, value: Any) -> dict[str, Any]:
    (body,) = _task_queues(ROOT / "examples" / "minimal.yaml")
    node = body
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return body


_DELETE = object()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (_bad("spec.worker.imagee", "x"), "spec.worker: Additional properties are not allowed"),
        (_bad("spec.bogus", 1), "spec: Additional properties are not allowed ('bogus'"),
        (_bad("spec.worker.app", _DELETE), "spec.worker: 'app' is a required property"),
        (_bad("spec.autoscaling.maxReplicas", 0), "spec.autoscaling.maxReplicas: 0 is less than"),
        (_bad("spec.autoscaling.minReplicas", "1"), "spec.autoscaling.minReplicas: '1' is not of"),
        (_bad("spec.priorities.mode", "fifo"), "spec.priorities.mode: 'fifo' is not one of"),
        (_bad("spec.rateLimit", {"perSecond": 0}), "spec.rateLimit.perSecond: 0 is less than or"),
        (
            _bad("spec.priorities.levels", [{"name": "a"}, {"name": "a", "weight": 2}]),
            "spec.priorities.levels[1]: duplicate entry with {'name': 'a'}",
        ),
        (_bad("spec.worker.resources", "lots"), "spec.worker.resources: 'lots' is not of type"),
        (_bad("status.backlog", -1), "status.backlog: -1 is less than the minimum of 0"),
    ],
    ids=[
        "unknown-nested",
        "unknown-top",
        "required",
        "range",
        "type",
        "enum",
        "exclusive-minimum",
        "list-map-key",
        "preserve-unknown-is-still-typed",
        "status",
    ],
)
def test_bad_resources_are_rejected(body: dict[str, Any], problem: str) -> None:
    problems = validate_resource(apply_defaults(openapi_schema(), body))
    assert any(p.startswith(problem) for p in problems), problems
    with pytest.raises(InvalidSpec) as info:
        checked_spec(body)
    assert any(p.startswith(problem) for p in info.value.problems)


def test_cel_only_violations_pass_the_schema_but_not_the_models() -> None:
    body = _bad("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2})
    assert validate_resource(apply_defaults(openapi_schema(), body)) == []
    with pytest.raises(InvalidSpec) as info:
        checked_spec(body)
    assert info.value.problems == ("spec.autoscaling.minReplicas: must be <= maxReplicas (5 > 2)",)


def test_free_form_fields_keep_unknown_content() -> None:
    body = _bad("spec.worker.podTemplate", {"affinity": {"anything": {"goes": [1, 2]}}})
    assert validate_resource(body) == []
    assert checked_spec(body).worker.pod_template is not None


# --- the translation itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}}, {"a": "x"}, {"b": 1}),
        (
            {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            {"b": {"c": 1}},
            "not-an-object",
        ),
        ({"type": "object"}, {}, {"pruned": 1}),
        ({"x-kubernetes-int-or-string": True}, "50%", 1.5),
        ({"type": "string", "nullable": True}, None, 3),
        ({"type": "number", "minimum": 0, "exclusiveMinimum": True}, 0.1, 0),
        ({"type": "integer", "maximum": 5, "exclusiveMaximum": True}, 4, 5),
        (
            {"type": "object", "additionalProperties": {"type": "integer"}},
            {"x": 1},
            {"x": "1"},
        ),
        (
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["k"],
                    "properties": {"k": {"type": "string"}},
                },
            },
            [{"k": "v"}],
            [{"k": "v", "extra": 1}],
        ),
    ],
    ids=[
        "closed-object",
        "preserve-unknown",
        "empty-object-prunes-everything",
        "int-or-string",
        "nullable",
        "exclusive-minimum",
        "exclusive-maximum",
        "map",
        "array-of-closed-objects",
    ],
)
def test_to_jsonschema(schema: dict[str, Any], good: Any, bad: Any) -> None:
    validator = jsonschema.Draft202012Validator(to_jsonschema(schema, root=False))
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(bad)) != []


def test_root_metadata_is_left_to_the_api_server() -> None:
    validator = jsonschema.Draft202012Validator(to_jsonschema(openapi_schema()))
    body = _bad("metadata.labels", {"a": "b"})
    assert list(validator.iter_errors(apply_defaults(openapi_schema(), body))) == []


@pytest.mark.parametrize(
    ("schema", "value", "expected"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "integer", "default": 1}}},
            {},
            {"a": 1},
        ),
        (
            {
                "type": "object",
                "properties": {
                    "o": {
                        "type": "object",
                        "default": {},
                        "properties": {"x": {"type": "integer", "default": 2}},
                    }
                },
            },
            {},
            {"o": {"x": 2}},
        ),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "default": 1}}},
            {"a": None},
            {"a": 1},
        ),
        ({"type": "object", "properties": {"a": {"type": "integer"}}}, {"a": None}, {}),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "nullable": True, "default": "d"}},
            },
            {"a": None},
            {"a": None},
        ),
        (
            {
                "type": "array",
                "items": {"type": "object", "properties": {"w": {"type": "integer", "default": 1}}},
            },
            [{}, {"w": 3}],
            [{"w": 1}, {"w": 3}],
        ),
        (
            {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"w": {"type": "integer", "default": 1}},
                },
            },
            {"k": {}},
            {"k": {"w": 1}},
        ),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "default": 1}}},
            {"a": 5, "kept": True},
            {"a": 5, "kept": True},
        ),
    ],
    ids=[
        "absent",
        "nested-default-object",
        "null-gets-default",
        "null-pruned",
        "nullable-null-kept",
        "array-items",
        "map-values",
        "present-wins",
    ],
)
def test_apply_defaults(schema: dict[str, Any], value: Any, expected: Any) -> None:
    original = copy.deepcopy(value)
    assert apply_defaults(schema, value) == expected
    assert value == original  # never mutates its input
