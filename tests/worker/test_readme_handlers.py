"""The README's handler example and its testing example run as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from worker_support import REPO


def section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(title)
    end = text.index("\n### ", start + 1)
    return text[start:end]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_handler_and_its_run_task_test_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks, test = python_blocks(section("### Handlers and workers"))
    assert tasks.startswith("# myapp/tasks.py")
    pkg = tmp_path / "myapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(tasks)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, object] = {}
    try:
        exec(compile(test, "README.md", "exec"), namespace)
        tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
        assert tests
        for fn in tests:
            fn()
    finally:
        for name in [m for m in sys.modules if m == "myapp" or m.startswith("myapp.")]:
            del sys.modules[name]
