"""The TaskQueue CRD as data: loading it, and doing what the API server does with its schema.

The operator needs this at runtime as well as the tests: `kubeq up` and the Kubernetes
emulator used in tests have no API server to apply the schema's defaults or reject
unknown fields, so the operator does both itself before parsing a spec. CEL rules are not
evaluated here; `spec.py` has a validator for each of them.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from kubeq_operator.core.errors import InvalidSpec
from kubeq_operator.core.spec import TaskQueueSpec, format_errors

GROUP = "kubeq.io"
VERSION = "v1alpha1"
PLURAL = "taskqueues"
CRD_FILE = "taskqueue.yaml"

JsonSchema = dict[str, Any]


def crd_path() -> Path:
    """The CRD file: $KUBEQ_CRD_PATH, a copy inside the installed package, or the repo's crds/."""
    override = os.environ.get("KUBEQ_CRD_PATH")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parents[1]  # kubeq_operator/
    for candidate in (package / "crds" / CRD_FILE, package.parents[1] / "crds" / CRD_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"cannot find {CRD_FILE}; set KUBEQ_CRD_PATH")


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or data.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return data


def load_crd(path: Path | None = None) -> dict[str, Any]:
    """The CRD document (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_load(path or crd_path()))


def _version(crd: Mapping[str, Any], version: str) -> Mapping[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v  # type: ignore[no-any-return]
    raise KeyError(f"the CRD has no version {version!r}")


def openapi_schema(crd: Mapping[str, Any] | None = None, version: str = VERSION) -> JsonSchema:
    """The version's openAPIV3Schema (the whole resource)."""
    crd = crd if crd is not None else load_crd()
    return copy.deepcopy(_version(crd, version)["schema"]["openAPIV3Schema"])


@dataclass(frozen=True)
class ResourceNames:
    """What discovery says about the resource (e.g. to register it with an API emulator)."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    namespaced: bool
    subresources: tuple[str, ...]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def resource_names(crd: Mapping[str, Any] | None = None, version: str = VERSION) -> ResourceNames:
    crd = crd if crd is not None else load_crd()
    names = crd["spec"]["names"]
    return ResourceNames(
        group=crd["spec"]["group"],
        version=version,
        kind=names["kind"],
        plural=names["plural"],
        singular=names["singular"],
        short_names=tuple(names.get("shortNames", ())),
        namespaced=crd["spec"]["scope"] == "Namespaced",
        subresources=tuple(sorted(_version(crd, version).get("subresources", {}))),
    )


# --- OpenAPI (structural schema) -> JSON Schema ---------------------------------------------

_PASSTHROUGH = (
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
    "default",
    "uniqueItems",
    "multipleOf",
    "required",
)


def to_jsonschema(schema: Mapping[str, Any], *, root: bool = True) -> JsonSchema:
    """Translate a structural OpenAPI v3 schema into draft 2020-12 JSON Schema.

    Objects reject fields the schema does not declare, which is what the API server's
    pruning (and kubectl's strict field validation) does to them, unless the schema says
    x-kubernetes-preserve-unknown-fields. At the root, metadata is the API server's to
    validate, so it is left open.
    """
    out: JsonSchema = {k: copy.deepcopy(schema[k]) for k in _PASSTHROUGH if k in schema}
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in schema:
        out["type"] = [schema["type"], "null"] if schema.get("nullable") else schema["type"]
    # OpenAPI 3.0 spells exclusive bounds as booleans beside minimum/maximum.
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if schema.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
    for combinator in ("allOf", "anyOf", "oneOf"):
        if combinator in schema:
            out[combinator] = [to_jsonschema(s, root=False) for s in schema[combinator]]
    if "not" in schema:
        out["not"] = to_jsonschema(schema["not"], root=False)
    if "items" in schema:
        out["items"] = to_jsonschema(schema["items"], root=False)
    if "properties" in schema:
        out["properties"] = {
            name: to_jsonschema(sub, root=False) for name, sub in schema["properties"].items()
        }
        if root and "metadata" in out["properties"]:
            out["properties"]["metadata"] = {"type": "object"}
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        out["additionalProperties"] = to_jsonschema(additional, root=False)
    elif additional is not None:
        out["additionalProperties"] = bool(additional)
    elif schema.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


# --- defaulting and validation -------------------------------------------------------------


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it; returns a new value.

    A default fills an absent field (or a null one that is not nullable), and the defaults
    inside it then apply too: `default: {}` on an object turns on its fields' defaults.
    """
    if isinstance(value, Mapping):
        result = dict(value)
        properties: Mapping[str, Any] = schema.get("properties", {})
        for name, sub in properties.items():
            if result.get(name) is None and not sub.get("nullable"):
                if "default" in sub:
                    result[name] = copy.deepcopy(sub["default"])
                elif name in result:  # null without a default: the API server prunes it
                    del result[name]
        additional = schema.get("additionalProperties")
        for name in list(result):
            if name in properties:
                result[name] = apply_defaults(properties[name], result[name])
            elif isinstance(additional, Mapping):
                result[name] = apply_defaults(additional, result[name])
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(schema["items"], item) for item in value]
    return copy.deepcopy(value)


def _dotted(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _list_problems(schema: Mapping[str, Any], value: Any, path: str) -> list[str]:
    """Uniqueness of x-kubernetes-list-type map/set lists, which JSON Schema cannot express."""
    problems: list[str] = []
    if isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen = [tuple(i.get(k) for k in keys) for i in value if isinstance(i, Mapping)]
            problems += [
                f"{path}[{i}]: duplicate entry with {dict(zip(keys, key, strict=True))}"
                for i, key in enumerate(seen)
                if key in seen[:i]
            ]
        elif list_type == "set":
            problems += [
                f"{path}[{i}]: duplicate value {item!r}"
                for i, item in enumerate(value)
                if item in value[:i]
            ]
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                problems += _list_problems(items, item, f"{path}[{i}]")
    elif isinstance(value, Mapping):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                problems += _list_problems(sub, value[name], f"{path}.{name}" if path else name)
    return problems


@functools.cache
def _validator(crd_file: Path, version: str) -> jsonschema.Draft202012Validator:
    schema = to_jsonschema(openapi_schema(_load(crd_file), version))
    return jsonschema.Draft202012Validator(schema)


def validate_resource(
    body: Mapping[str, Any], *, crd_file: Path | None = None, version: str = VERSION
) -> list[str]:
    """Schema problems of a TaskQueue object (after defaulting), one "path: message" each."""
    crd_file = crd_file or crd_path()
    validator = _validator(crd_file, version)
    problems = [
        f"{_dotted(e.absolute_path)}: {e.message}"
        for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.path)))
    ]
    return problems + _list_problems(openapi_schema(_load(crd_file), version), body, "")


def checked_spec(body: Mapping[str, Any], *, crd_file: Path | None = None) -> TaskQueueSpec:
    """Default, schema-check and parse a TaskQueue object, as if an API server had admitted it.

    Raises InvalidSpec listing every problem found (schema problems first: they make the
    spec model's messages redundant).
    """
    crd_file = crd_file or crd_path()
    defaulted = apply_defaults(openapi_schema(_load(crd_file)), body)
    problems = validate_resource(defaulted, crd_file=crd_file)
    if problems:
        raise InvalidSpec(problems)
    try:
        return TaskQueueSpec.model_validate(defaulted["spec"])
    except ValidationError as exc:
        raise InvalidSpec(format_errors(exc)) from exc
