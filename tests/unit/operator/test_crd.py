"""The CRD itself: valid for the Kubernetes versions we support, structurally sound, fully
documented, and its generated reference in docs/operator.md is current."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from kubeq_operator.core.crd_schema import (
    apply_defaults,
    crd_path,
    load_crd,
    openapi_schema,
    resource_names,
    to_jsonschema,
)
from kubeq_operator.tools import crd_doc

ROOT = Path(__file__).resolve().parents[3]
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())


def _nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path or "<root>", schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), Mapping):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_crd_file_is_the_repository_one() -> None:
    assert crd_path() == ROOT / "crds" / "taskqueue.yaml"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crd_validates_strictly(version: str) -> None:
    checked = kubernetes_validate.validate(load_crd(), version, strict=True)
    assert version.startswith(checked)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_strict_validation_has_teeth(version: str) -> None:
    crd = load_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["descripton"] = (
        "typo"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, version, strict=True)


def test_names() -> None:
    crd = load_crd()
    names = resource_names(crd)
    assert crd["metadata"]["name"] == "taskqueues.kubeq.io"
    assert (names.group, names.version, names.kind) == ("kubeq.io", "v1alpha1", "TaskQueue")
    assert (names.plural, names.singular, names.short_names) == ("taskqueues", "taskqueue", ("tq",))
    assert names.namespaced
    assert names.api_version == "kubeq.io/v1alpha1"
    (version,) = crd["spec"]["versions"]
    assert version["served"]
    assert version["storage"]


def test_subresources() -> None:
    (version,) = load_crd()["spec"]["versions"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    props = openapi_schema()["properties"]
    assert props["spec"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["selector"]["type"] == "string"


def test_printer_columns() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Ready": ("string", '.status.conditions[?(@.type=="Ready")].status'),
        "Waiting": ("integer", ".status.waiting"),
        "In-flight": ("integer", ".status.inFlight"),
        "Backlog": ("integer", ".status.backlog"),
        "Replicas": ("integer", ".status.replicas"),
        "Desired": ("integer", ".status.desiredReplicas"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }
    status = openapi_schema()["properties"]["status"]["properties"]
    for _, (kind, path) in columns.items():
        if path.startswith(".status.") and "[" not in path:
            assert status[path.removeprefix(".status.")]["type"] == kind


def test_every_field_is_typed_and_described() -> None:
    nodes = list(_nodes(openapi_schema()))
    assert [path for path, node in nodes if not node.get("type")] == []
    # Map values ({}) are not fields: their map's description covers them.
    undescribed = [p for p, node in nodes if not node.get("description") and not p.endswith("{}")]
    assert undescribed == []


def test_schema_is_structural() -> None:
    """Every object says what it holds: properties, a map of values, or preserved fields."""
    loose = [
        path
        for path, node in _nodes(openapi_schema())
        if node.get("type") == "object"
        and path != "metadata"
        and not (
            node.get("properties")
            or isinstance(node.get("additionalProperties"), Mapping)
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
    ]
    assert loose == []


def test_defaults_are_valid_for_their_own_schema() -> None:
    """The API server rejects a CRD whose defaults fail its own schema."""
    for path, node in _nodes(openapi_schema()):
        if "default" in node:
            value = apply_defaults(node, copy.deepcopy(node["default"]))
            validator = jsonschema.Draft202012Validator(to_jsonschema(node, root=False))
            assert list(validator.iter_errors(value)) == [], path


def test_list_map_keys_are_required() -> None:
    for path, node in _nodes(openapi_schema()):
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path


def test_every_cel_rule_has_a_message_and_a_real_field_path() -> None:
    rules = 0
    for path, node in _nodes(openapi_schema()):
        for rule in node.get("x-kubernetes-validations", ()):
            rules += 1
            assert rule["message"], path
            if "fieldPath" in rule:
                assert rule["fieldPath"].removeprefix(".") in node["properties"], path
    assert rules >= 6


def test_required_fields() -> None:
    spec = openapi_schema()["properties"]["spec"]
    assert spec["required"] == ["redis", "worker"]
    assert spec["properties"]["worker"]["required"] == ["image", "app"]


def test_docs_reference_is_current() -> None:
    doc = (ROOT / "docs" / "operator.md").read_text()
    assert crd_doc.update_document(doc, crd_doc.render_reference()) == doc, (
        "docs/operator.md is stale: run python -m kubeq_operator.tools.crd_doc --write"
    )
    assert crd_doc.main(["--check"]) == 0


def test_docs_reference_covers_every_object_and_field() -> None:
    reference = crd_doc.render_reference()
    for path, node in _nodes(openapi_schema()):
        if node.get("properties") and path.split(".")[0] in ("spec", "status"):
            assert f"### `{path}`" in reference
            for name in node["properties"]:
                assert f"| `{name}` |" in reference
    assert "`1048576`" in reference  # defaults
    assert "one of `strict`, `weighted`" in reference  # enums
    assert "≥ 1; ≤ 1000" in reference  # ranges
    assert "**Required.**" in reference


def test_crd_doc_check_and_write(tmp_path: Path) -> None:
    stale = tmp_path / "operator.md"
    stale.write_text(f"intro\n{crd_doc.START}\nOLD-CONTENT\n{crd_doc.END}\noutro\n")
    assert crd_doc.main(["--check", "--doc", str(stale)]) == 1
    assert crd_doc.main(["--write", "--doc", str(stale)]) == 0
    text = stale.read_text()
    assert text.startswith("intro\n")
    assert text.endswith("outro\n")
    assert "OLD-CONTENT" not in text
    assert crd_doc.main(["--check", "--doc", str(stale)]) == 0
    stale.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        crd_doc.main(["--check", "--doc", str(stale)])
