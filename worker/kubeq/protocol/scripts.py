"""The Lua scripts, read once from their `.lua` files and addressed by SHA-1.

Callers run a script with EVALSHA and load it only when Redis answers NOSCRIPT (after a
restart or SCRIPT FLUSH), so each script crosses the wire once per server, not per call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

# Scripts that only read: run with EVALSHA_RO, whose declared keys Redis checks as reads,
# so a read-only ACL user (dashboard, CLI) may run them and a replica can serve them.
READ_ONLY = frozenset({"stats", "status"})


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str

    @property
    def read_only(self) -> bool:
        return self.name in READ_ONLY


def _load() -> dict[str, Script]:
    scripts: dict[str, Script] = {}
    for entry in resources.files("kubeq.protocol").joinpath("lua").iterdir():
        if entry.name.endswith(".lua"):
            source = entry.read_text(encoding="utf-8")
            name = entry.name.removesuffix(".lua")
            scripts[name] = Script(name, source, hashlib.sha1(source.encode()).hexdigest())
    return scripts


SCRIPTS: dict[str, Script] = _load()
