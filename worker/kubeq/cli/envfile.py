"""The `.kubeq/env` file that `kubeq up` writes and every `kubeq` command reads.

`kubeq up` keeps its state (Redis data, worker logs) in a `.kubeq/` directory of the
directory it runs in, and writes there the Redis URL, queue and namespace it serves, so a
second shell in the same project needs no copied URL. A command looks for `.kubeq/env`
in the current directory and its parents, as git looks for `.git`.

Precedence, for each setting: a command-line option > a KUBEQ_* environment variable >
the env file > the built-in default.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_NAME = ".kubeq"
ENV_FILE_NAME = "env"
# The settings an env file may give; anything else in the file is ignored.
KEYS = ("KUBEQ_REDIS_URL", "KUBEQ_QUEUE", "KUBEQ_NAMESPACE")


def find_env_file(start: Path | None = None) -> Path | None:
    """The nearest `.kubeq/env` from `start` (default: the working directory) upwards."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / STATE_DIR_NAME / ENV_FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments skipped; only the known KEYS)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.removeprefix("export ").strip()
        if key in KEYS:
            out[key] = value.strip()
    return out


def read_env_file(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        return parse_env(path.read_text())
    except OSError:
        return {}  # unreadable: as if absent; flags and the environment still work


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write KEY=VALUE lines (also `set -a; . .kubeq/env` in a shell); owner-only, since
    a Redis URL may hold a password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "# written by `kubeq up`; kubeq commands run in this tree read it\n" + "".join(
        f"{k}={v}\n" for k, v in values.items() if k in KEYS
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body)
    tmp.replace(path)
