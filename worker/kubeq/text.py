"""Text from Redis or users made safe for a terminal or a text log line.

Task records, error messages, worker ids and counter names come from Redis, which any
producer (or a foreign writer) fills: a newline there would forge a log line, an escape
sequence would recolour or rewrite the terminal, a bidi override would reorder what the
reader sees. Every human-facing output passes such text through `printable`.
"""

from __future__ import annotations

import unicodedata

_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp"})  # controls, format (bidi), line separators


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, newlines: bool = False, indent: str = "    ") -> str:
    """`str(value)` with every control, format and separator character escaped (\\x1b,
    \\u202e). `newlines=True` keeps line breaks (a traceback block) but starts every
    continuation line with `indent`, so no line of the block can pass for a record of its
    own (a log line, a field of `kubeq status`)."""
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if newlines and ch == "\n":
            out.append("\n" + indent)
        elif unicodedata.category(ch) in _UNSAFE:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)
