"""docs/reference.md documents every public name, as the code has it now.

The names come from the code, not from a list kept here: the public methods, properties
and instance attributes of the API classes (read from their `__init__` assignments), the
fields of TaskContext, every exception class of kubeq.protocol.errors and
kubeq.exceptions, and kubeq.__all__. So a name added by anyone (a new error, a new client
method) fails this test until it is documented, and a documented name that was removed
fails it too.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from pathlib import Path

import kubeq
import kubeq.exceptions
from kubeq.app import TaskHandle
from kubeq.protocol import errors

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
CLASSES: tuple[type, ...] = (
    kubeq.App,
    TaskHandle,
    kubeq.TaskContext,
    kubeq.Client,
    kubeq.AsyncClient,
)


def _init_attributes(cls: type) -> set[str]:
    """Public `self.x = ...` targets in the __init__ of `cls` and its kubeq bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("kubeq") or "__init__" not in vars(klass):
            continue
        init = vars(klass)["__init__"]
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        except (OSError, TypeError):  # generated (dataclass) __init__: fields cover it
            continue
        for node in ast.walk(tree):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for t in targets:
                if (
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                    and not t.attr.startswith("_")
                ):
                    names.add(t.attr)
    return names


def public_members(cls: type) -> set[str]:
    names = {n for n in dir(cls) if not n.startswith("_")}
    names -= set(dir(object))
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    return names | _init_attributes(cls)


def exception_classes() -> set[type]:
    found = set()
    for module in (errors, kubeq.exceptions):
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found.add(obj)
    return found


def documented() -> set[str]:
    return set(re.findall(r"^#{2,3}\s+`([A-Za-z_][\w.]*)`", REFERENCE.read_text(), re.MULTILINE))


def expected() -> set[str]:
    names = {f"{cls.__name__}.{m}" for cls in CLASSES for m in public_members(cls)}
    names |= {cls.__name__ for cls in exception_classes()}
    names |= {n for n in kubeq.__all__ if not n.startswith("_")}
    names |= {cls.__name__ for cls in CLASSES}
    names.add("App.__init__")
    return names


def test_every_public_name_has_an_entry_in_the_reference() -> None:
    missing = sorted(expected() - documented())
    assert missing == [], f"add a `### \\`Name\\`` entry to docs/reference.md for: {missing}"


def test_the_reference_documents_nothing_that_is_gone() -> None:
    stale = sorted(documented() - expected())
    assert stale == [], f"docs/reference.md documents names the code no longer has: {stale}"


def test_every_public_method_and_error_has_a_docstring() -> None:
    undocumented = []
    for cls in CLASSES:
        for name in sorted(public_members(cls)):
            member = inspect.getattr_static(cls, name, None)
            if isinstance(member, classmethod | staticmethod):
                member = member.__func__
            if isinstance(member, property):
                member = member.fget
            if not callable(member):
                continue  # a field or attribute: documented in the reference
            if member.__doc__:
                continue
            # An AsyncClient method shares its Client twin's documentation.
            twin = getattr(kubeq.Client, name, None) if cls is kubeq.AsyncClient else None
            if twin is not None and getattr(twin, "__doc__", None):
                continue
            undocumented.append(f"{cls.__name__}.{name}")
    undocumented += [c.__name__ for c in exception_classes() if not c.__doc__]
    assert undocumented == [], f"no docstring: {undocumented}"


def test_the_checker_sees_a_missing_entry(tmp_path: Path) -> None:
    # The test can fail: a name the code has and the page lacks is reported.
    assert "Client.submit" in expected()
    assert "TaskContext.attempt" in expected()
    assert "Client.redis" in expected()  # an instance attribute, from __init__
    assert "Retry" in expected()
    assert "Client.no_such_method" not in expected()
