"""Generate the TaskQueue reference in docs/operator.md from crds/taskqueue.yaml.

    python -m kubeq_operator.tools.crd_doc            # print the reference
    python -m kubeq_operator.tools.crd_doc --write    # rewrite it in docs/operator.md
    python -m kubeq_operator.tools.crd_doc --check    # exit 1 if docs/operator.md is stale

The reference sits between START and END markers; the rest of the page is hand-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubeq_operator.core.crd_schema import load_crd, openapi_schema, resource_names

START = "<!-- crd-reference:start -->"
END = "<!-- crd-reference:end -->"
DOC_PATH = Path(__file__).resolve().parents[3] / "docs" / "operator.md"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return f"map of {_type(schema['additionalProperties'])}"
    if kind == "object" and schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    return str(kind)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _range(schema: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None:
        parts.append(f"{'>' if schema.get('exclusiveMinimum') else '≥'} {_num(low)}")
    if high is not None:
        parts.append(f"{'<' if schema.get('exclusiveMaximum') else '≤'} {_num(high)}")
    for what, lo_key, hi_key in (
        ("length", "minLength", "maxLength"),
        ("items", "minItems", "maxItems"),
    ):
        lo, hi = schema.get(lo_key), schema.get(hi_key)
        if lo is not None and hi is not None:
            parts.append(f"{what} {lo} to {hi}")
        elif lo is not None:
            parts.append(f"{what} ≥ {lo}")
        elif hi is not None:
            parts.append(f"{what} ≤ {hi}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    keys = schema.get("x-kubernetes-list-map-keys")
    if keys:
        parts.append("unique " + ", ".join(f"`{k}`" for k in keys))
    return "; ".join(parts)


def _default(schema: Mapping[str, Any]) -> str:
    if "default" not in schema:
        return ""
    return f"`{json.dumps(schema['default'], separators=(', ', ': '))}`"


def _sections(schema: Mapping[str, Any], path: str) -> list[str]:
    """One table for the object at `path`, then one for each object below it."""
    properties: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    lines = [f"### `{path}`", "", _cell(schema.get("description", ""))]
    for rule in schema.get("x-kubernetes-validations", ()):
        lines.append(f"- Rule: {_cell(rule['message'])} (`{_cell(rule['rule'])}`)")
    lines += [
        "",
        "| Field | Type | Default | Range / values | Description |",
        "|---|---|---|---|---|",
    ]
    nested: list[tuple[str, Mapping[str, Any]]] = []
    for name, sub in properties.items():
        desc = ("**Required.** " if name in required else "") + sub.get("description", "")
        row = (f"`{name}`", _type(sub), _default(sub), _range(sub), desc)
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        if sub.get("properties"):
            nested.append((f"{path}.{name}", sub))
        elif sub.get("type") == "array" and sub.get("items", {}).get("properties"):
            nested.append((f"{path}.{name}[]", sub["items"]))
    lines.append("")
    for sub_path, sub in nested:
        lines += _sections(sub, sub_path)
    return lines


def render_reference(crd: Mapping[str, Any] | None = None) -> str:
    crd = crd if crd is not None else load_crd()
    names = resource_names(crd)
    schema = openapi_schema(crd)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == names.version)
    lines = [
        f"API: `{names.api_version}`, kind `{names.kind}`, plural `{names.plural}`, "
        f"short name{'s' if len(names.short_names) != 1 else ''} "
        + ", ".join(f"`{s}`" for s in names.short_names)
        + f", {'namespaced' if names.namespaced else 'cluster-scoped'}; subresources "
        + ", ".join(f"`{s}`" for s in names.subresources)
        + ".",
        "",
        "Printer columns (`kubectl get tq`): "
        + ", ".join(f"{c['name']} (`{c['jsonPath']}`)" for c in version["additionalPrinterColumns"])
        + ".",
        "",
    ]
    for part in ("spec", "status"):
        lines += _sections(schema["properties"][part], part)
    return "\n".join(lines).rstrip() + "\n"


def update_document(text: str, reference: str) -> str:
    """Replace what lies between the markers; raises ValueError if they are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"markers {START} / {END} not found in order")
    return text[: start + len(START)] + "\n\n" + reference + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeq_operator.tools.crd_doc")
    parser.add_argument("--doc", type=Path, default=DOC_PATH)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the reference in --doc")
    mode.add_argument("--check", action="store_true", help="exit 1 if --doc is stale")
    args = parser.parse_args(argv)
    reference = render_reference()
    if not (args.write or args.check):
        sys.stdout.write(reference)
        return 0
    current = args.doc.read_text(encoding="utf-8")
    wanted = update_document(current, reference)
    if args.check:
        if wanted != current:
            print(f"{args.doc} is stale: run python -m kubeq_operator.tools.crd_doc --write")
            return 1
        return 0
    if wanted != current:
        args.doc.write_text(wanted, encoding="utf-8")
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
