"""The pydantic models mirror the CRD exactly, and bad specs get precise messages."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from kubeq.protocol.config import Backoff, PriorityLevel, QueueConfig, RateLimit
from kubeq_operator.core.crd_schema import apply_defaults, load_crd, openapi_schema
from kubeq_operator.core.errors import InvalidSpec
from kubeq_operator.core.spec import (
    OPERATOR_ENV,
    TaskQueueSpec,
    TaskQueueStatus,
    parse_spec,
    parse_status,
)

# Schema keywords whose values must agree between the CRD and the models.
_CONSTRAINTS = ("enum", "minimum", "maximum", "minLength", "maxLength", "pattern")
_CONSTRAINTS += ("minItems", "maxItems")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def crd_shape(schema: Mapping[str, Any]) -> dict[str, Any]:
    """What the drift test compares, from the CRD side."""
    out: dict[str, Any] = {"type": schema.get("type")}
    out.update({k: schema[k] for k in _CONSTRAINTS if k in schema})
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if schema.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        out["open"] = True
    if "default" in schema:
        out["default"] = apply_defaults(schema, schema["default"])
    if "properties" in schema:
        out["properties"] = {k: crd_shape(v) for k, v in schema["properties"].items()}
        out["required"] = sorted(schema.get("required", []))
    if "items" in schema:
        out["items"] = crd_shape(schema["items"])
    if isinstance(schema.get("additionalProperties"), Mapping):
        out["values"] = crd_shape(schema["additionalProperties"])
    return out


def model_shape(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """The same, from a pydantic model's JSON schema ($refs resolved, Optional unwrapped)."""
    node = dict(schema)
    if "$ref" in node:
        node = {**defs[node.pop("$ref").rsplit("/", 1)[-1]], **node}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        assert len(branches) == 1, f"unexpected union {branches}"
        return model_shape({**branches[0], **node}, defs)
    out: dict[str, Any] = {"type": node.get("type")}
    out.update({k: node[k] for k in _CONSTRAINTS if k in node})
    for exclusive in ("exclusiveMinimum", "exclusiveMaximum"):
        if exclusive in node:
            out[exclusive] = node[exclusive]
    if node.get("additionalProperties") is True:
        out["open"] = True
    if node.get("default") is not None:
        out["default"] = _drop_none(node["default"])
    if "properties" in node:
        out["properties"] = {k: model_shape(v, defs) for k, v in node["properties"].items()}
        out["required"] = sorted(node.get("required", []))
    if "items" in node:
        out["items"] = model_shape(node["items"], defs)
    if isinstance(node.get("additionalProperties"), Mapping):
        out["values"] = model_shape(node["additionalProperties"], defs)
    return out


def pydantic_shape(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return model_shape(schema, schema.get("$defs", {}))


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                side = "CRD" if key in a else "model"
                out.append(f"{path}.{key}: only in the {side}")
            else:
                out += differences(a[key], b[key], f"{path}.{key}")
        return out
    return [] if a == b else [f"{path}: CRD {a!r} != model {b!r}"]


@pytest.mark.parametrize(
    ("part", "model"),
    [("spec", TaskQueueSpec), ("status", TaskQueueStatus)],
    ids=["spec", "status"],
)
def test_models_mirror_the_crd(part: str, model: type[BaseModel]) -> None:
    crd = crd_shape(openapi_schema()["properties"][part])
    assert differences(crd, pydantic_shape(model)) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(crd: dict[str, Any]) -> None:
        node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        *parents, last = path.split(".")
        for p in parents:
            node = node["properties"][p]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("spec.retry.maxAttempts.default", 6), ".retry.properties.maxAttempts.default"),
        (_set("spec.autoscaling.maxReplicas.maximum", 99), "maxReplicas.maximum"),
        (_set("spec.priorities.mode.enum", ["strict"]), ".mode.enum"),
        (_set("spec.lease.heartbeatSeconds.type", "integer"), "heartbeatSeconds.type"),
        (_set("spec.worker.required", ["image"]), ".worker.required"),
        (_set("spec.redis.properties", None), ".redis.properties: only in the model"),
        (_set("spec.rateLimit.perSecond.exclusiveMinimum", None), "perSecond.exclusiveMinimum"),
    ],
)
def test_drift_is_detected(mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    crd = load_crd()
    mutate(crd)
    problems = differences(
        crd_shape(openapi_schema(crd)["properties"]["spec"]), pydantic_shape(TaskQueueSpec)
    )
    assert any(expected in p for p in problems), problems


MINIMAL = {"redis": {"url": "redis://r:6379/0"}, "worker": {"image": "img", "app": "pkg.mod:app"}}


@pytest.mark.parametrize(
    "spec",
    [
        MINIMAL,
        {**MINIMAL, "priorities": {}, "retry": {"backoff": {}}, "autoscaling": {}},
        {
            "redis": {
                "secretRef": {"name": "s"},
                "tls": {
                    "enabled": True,
                    "caSecretRef": {"name": "ca"},
                    "clientCertSecretRef": {"name": "c"},
                },
                "passwordSecretRef": {"name": "p"},
            },
            "worker": {
                "image": "img",
                "app": "m:app",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}}],
                "podTemplate": {"labels": {"a": "b"}},
            },
            "priorities": {"levels": [{"name": "a"}, {"name": "b", "weight": 3}]},
            "rateLimit": {"perSecond": 2.5},
        },
    ],
    ids=["minimal", "empty-objects", "nested-optionals"],
)
def test_defaults_agree(spec: dict[str, Any]) -> None:
    """The API server's defaulting and the models' defaults produce the same object."""
    crd_defaulted = apply_defaults(openapi_schema()["properties"]["spec"], spec)
    model = parse_spec(copy.deepcopy(spec)).model_dump(by_alias=True, exclude_none=True)
    assert model == crd_defaulted


def _rules() -> dict[str, str]:
    """CEL rule → message, for every rule in the CRD."""
    found: dict[str, str] = {}

    def walk(node: Mapping[str, Any]) -> None:
        for rule in node.get("x-kubernetes-validations", ()):
            found[rule["rule"]] = rule["message"]
        for sub in node.get("properties", {}).values():
            walk(sub)
        if isinstance(node.get("items"), Mapping):
            walk(node["items"])

    walk(openapi_schema())
    return found


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return spec


# Each CEL rule of the CRD, a spec that breaks it, and what parse_spec must say.
CEL_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "has(self.cron) != has(self.intervalSeconds)": (
        _with("schedules", [{"name": "s", "task": "t"}]),
        "spec.schedules[0].cron: set exactly one of cron and intervalSeconds",
    ),
    "has(self.url) != has(self.secretRef)": (
        _with("redis.secretRef", {"name": "s"}),
        "spec.redis.url: exactly one of url and secretRef must be set",
    ),
    "!has(self.default) || self.levels.exists(l, l.name == self.default)": (
        _with("priorities.default", "urgent"),
        "spec.priorities.default: must name one of the levels ('urgent' is not in "
        "['high', 'default', 'low'])",
    ),
    "self.baseSeconds <= self.maxSeconds": (
        _with("retry.backoff", {"baseSeconds": 10, "maxSeconds": 5}),
        "spec.retry.backoff.baseSeconds: must be <= maxSeconds (10 > 5)",
    ),
    "self.heartbeatSeconds < self.durationSeconds": (
        _with("lease", {"durationSeconds": 10, "heartbeatSeconds": 10}),
        "spec.lease.heartbeatSeconds: must be < durationSeconds (10 >= 10)",
    ),
    "self.minReplicas <= self.maxReplicas": (
        _with("autoscaling", {"minReplicas": 12, "maxReplicas": 10}),
        "spec.autoscaling.minReplicas: must be <= maxReplicas (12 > 10)",
    ),
    "!has(self.fallbackReplicas) || self.fallbackReplicas <= self.maxReplicas": (
        _with("autoscaling", {"fallbackReplicas": 11}),
        "spec.autoscaling.fallbackReplicas: must be <= maxReplicas (11 > 10)",
    ),
    "self.enabled || !(self.insecureSkipVerify || has(self.caSecretRef) || "
    "has(self.clientCertSecretRef))": (
        _with("redis.tls", {"caSecretRef": {"name": "ca"}}),
        "spec.redis.tls.enabled: must be true when insecureSkipVerify, caSecretRef or "
        "clientCertSecretRef is set",
    ),
    "!has(self.idempotencyTtlSeconds) || self.idempotencyTtlSeconds <= self.ttlSeconds": (
        _with("results", {"ttlSeconds": 60, "idempotencyTtlSeconds": 61}),
        "spec.results.idempotencyTtlSeconds: must be <= ttlSeconds (61 > 60)",
    ),
}


def _env_rule() -> str:
    return next(r for r in _rules() if "KUBEQ_REDIS_URL" in r)


def test_every_cel_rule_has_a_model_check() -> None:
    assert set(_rules()) == {*CEL_CASES, _env_rule()}


@pytest.mark.parametrize("rule", sorted(CEL_CASES))
def test_cel_rules_are_enforced_by_the_model(rule: str) -> None:
    spec, message = CEL_CASES[rule]
    with pytest.raises(InvalidSpec) as info:
        parse_spec(spec)
    assert info.value.problems == (message,)


def test_env_rule_lists_exactly_the_operator_env() -> None:
    assert set(re.findall(r"'(KUBEQ_[A-Z_]+)'", _env_rule())) == set(OPERATOR_ENV)
    worker = {**MINIMAL["worker"], "env": [{"name": "OK"}, {"name": "KUBEQ_CONCURRENCY"}]}
    with pytest.raises(InvalidSpec) as info:
        parse_spec({**MINIMAL, "worker": worker})
    assert info.value.problems == (
        "spec.worker.env: must not set variables that the operator sets: ['KUBEQ_CONCURRENCY']",
    )


@pytest.mark.parametrize(
    ("spec", "problems"),
    [
        ({}, ["spec.redis: required", "spec.worker: required"]),
        (
            _with("autoscaling.maxReplicas", 1001),
            ["spec.autoscaling.maxReplicas: input should be less than or equal to 1000 (got 1001)"],
        ),
        (
            _with("worker.concurrency", "16"),
            ["spec.worker.concurrency: input should be a valid integer (got '16')"],
        ),
        (
            _with("priorities.mode", "fifo"),
            ["spec.priorities.mode: input should be 'strict' or 'weighted' (got 'fifo')"],
        ),
        (_with("worker.imagee", "x"), ["spec.worker.imagee: unknown field"]),
        (
            _with("priorities.levels", [{"name": "ok"}, {"name": "Bad Name"}, {"name": "ok"}]),
            [
                "spec.priorities.levels[1].name: string should match pattern "
                "'^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$' (got 'Bad Name')"
            ],
        ),
        (
            _with("priorities.levels", [{"name": "a"}, {"name": "a"}]),
            ["spec.priorities.levels: duplicate level names: ['a']"],
        ),
        (
            _with("rateLimit", {"perSecond": 0}),
            ["spec.rateLimit.perSecond: input should be greater than 0 (got 0)"],
        ),
        (
            {
                "redis": {"url": "http://nope"},
                "worker": {"image": "", "app": "no-colon"},
                "autoscaling": {"minReplicas": -1},
                "replicas": 2000,
            },
            [
                "spec.redis.url: string should match pattern '^(redis|rediss|unix)://.+$' "
                "(got 'http://nope')",
                "spec.worker.image: string should have at least 1 character (got '')",
                "spec.worker.app: string should match pattern "
                "'^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$' "
                "(got 'no-colon')",
                "spec.autoscaling.minReplicas: input should be greater than or equal to 0 (got -1)",
                "spec.replicas: input should be less than or equal to 1000 (got 2000)",
            ],
        ),
    ],
    ids=[
        "missing",
        "range",
        "strict-int",
        "enum",
        "unknown",
        "pattern",
        "duplicate-levels",
        "exclusive",
        "every-field",
    ],
)
def test_invalid_specs_name_every_field(spec: dict[str, Any], problems: list[str]) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(spec)
    assert list(info.value.problems) == problems
    for p in problems:
        assert p in str(info.value)


def test_non_object_spec() -> None:
    with pytest.raises(InvalidSpec, match="spec: must be an object"):
        parse_spec(None)


def test_to_queue_config() -> None:
    spec = parse_spec(
        {
            **MINIMAL,
            "priorities": {
                "mode": "weighted",
                "levels": [{"name": "critical", "weight": 10}, {"name": "bulk"}],
                "default": "bulk",
            },
            "retry": {"maxAttempts": 7, "backoff": {"baseSeconds": 0.5, "factor": 3}},
            "deadLetter": {"retentionSeconds": 60},
            "results": {"ttlSeconds": 120, "idempotencyTtlSeconds": 90},
            "lease": {"durationSeconds": 20, "heartbeatSeconds": 4},
            "maxBacklog": 1000,
            "maxPayloadBytes": 4096,
            "maxResultBytes": 2048,
            "rateLimit": {"perSecond": 5, "burst": 10},
        }
    )
    assert spec.to_queue_config("telemetry", "prod") == QueueConfig(
        name="telemetry",
        namespace="prod",
        priorities=(PriorityLevel(name="critical", weight=10), PriorityLevel(name="bulk")),
        default_priority="bulk",
        mode="weighted",
        max_attempts=7,
        backoff=Backoff(base_seconds=0.5, factor=3, max_seconds=300),
        lease_seconds=20,
        heartbeat_seconds=4,
        result_ttl_seconds=120,
        idempotency_ttl_seconds=90,
        dead_letter_retention_seconds=60,
        max_backlog=1000,
        max_payload_bytes=4096,
        max_result_bytes=2048,
        rate_limit=RateLimit(per_second=5, burst=10),
    )


def test_default_queue_config_matches_the_protocol_defaults() -> None:
    """A TaskQueue that says nothing means the same as a QueueConfig that says nothing."""
    assert parse_spec(MINIMAL).to_queue_config("q", "ns") == QueueConfig(name="q", namespace="ns")


def test_to_queue_config_rejects_names_the_protocol_cannot_key() -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(MINIMAL).to_queue_config("x" * 64, "default")
    assert info.value.problems[0].startswith("metadata.name: queue name 'xxx")


def test_static_replicas() -> None:
    assert parse_spec(MINIMAL).static_replicas == 1
    assert parse_spec({**MINIMAL, "replicas": 0}).static_replicas == 0


def test_status_round_trip() -> None:
    status = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reconciled",
                "message": "ok",
                "lastTransitionTime": "2024-01-01T00:00:00Z",
                "observedGeneration": 3,
            }
        ],
        "observedGeneration": 3,
        "replicas": 2,
        "desiredReplicas": 3,
        "backlog": 10,
        "inFlight": 4,
        "deadLetter": 0,
        "backlogByPriority": {"high": 10},
        "selector": "a=b",
    }
    assert parse_status(status).model_dump(by_alias=True, exclude_none=True) == status
    with pytest.raises(InvalidSpec, match=r"status\.conditions\[0\]\.status"):
        parse_status({"conditions": [{"type": "Ready", "status": "yes"}]})
