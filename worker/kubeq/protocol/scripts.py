"""The Lua scripts, read once from their `.lua` files and addressed by SHA-1.

Callers run a script with EVALSHA (EVALSHA_RO for the read-only ones) and load it only
when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH), so each script crosses the
wire once per server, not per call.

Every script starts with a Redis 7 `#!lua` line that declares its flags; `_lib.lua`
(shared helpers) is spliced in right after that line, so a script stays one body.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

LIBRARY = "_lib.lua"


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str
    flags: frozenset[str]

    @property
    def read_only(self) -> bool:
        """Declared `no-writes`: runs with EVALSHA_RO, on replicas and for read-only users."""
        return "no-writes" in self.flags


def parse_flags(shebang: str) -> frozenset[str]:
    """The flags of a `#!lua flags=a,b` line; ValueError when the line is not one."""
    if not shebang.startswith("#!lua"):
        raise ValueError(f"script must start with a '#!lua' line, got {shebang!r}")
    for word in shebang.split()[1:]:
        if word.startswith("flags="):
            return frozenset(f for f in word.removeprefix("flags=").split(",") if f)
    return frozenset()


def compose(name: str, text: str, library: str) -> Script:
    shebang, _, body = text.partition("\n")
    flags = parse_flags(shebang)
    source = f"{shebang}\n{library}\n{body}"
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest(), flags)


def _load() -> dict[str, Script]:
    folder = resources.files("kubeq.protocol").joinpath("lua")
    library = folder.joinpath(LIBRARY).read_text(encoding="utf-8")
    scripts: dict[str, Script] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".lua") and not entry.name.startswith("_"):
            name = entry.name.removesuffix(".lua")
            scripts[name] = compose(name, entry.read_text(encoding="utf-8"), library)
    return scripts


SCRIPTS: dict[str, Script] = _load()
