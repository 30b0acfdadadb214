"""Hostile secrets shared by the leak tests: every fragment of every one starts with MARK.

A message leaks a secret when MARK appears in it, whatever part of the secret a parser
split off (redis-py and urllib cut URLs at '#', '/', '?', '@' and ':').
"""

from __future__ import annotations

from urllib.parse import quote

MARK = "Zq"
#: every character with a meaning in a URL, plus quotes, space, backslash and a newline
SPECIALS = "#/?@:% &=+[]!$'\";,\\\n*~^`|<>{}"
PASSWORD = "".join(f"{MARK}{i}{ch}" for i, ch in enumerate(SPECIALS)) + f"{MARK}end"
NON_URL = f"{MARK}S3cr3t-DB-Password!"


def hostile_urls(host: str, *, each_char: bool = True) -> list[str]:
    """URLs that carry PASSWORD (raw and percent-encoded), non-URLs and unparseable URLs;
    `each_char` adds one URL per special character, unescaped in the password."""
    one_char = [f"redis://app:{MARK}a{ch}{MARK}b@{host}/0" for ch in SPECIALS if each_char]
    return [
        f"redis://app:{quote(PASSWORD, safe='')}@{host}/0",
        f"redis://:{quote(PASSWORD, safe='')}@{host}/0",
        f"redis://app:{PASSWORD}@{host}/0",
        f"rediss://{PASSWORD}@{host}",
        f"redis+sentinel://app:{PASSWORD}@{host}/svc",
        f"redis://{host}/0?password={quote(PASSWORD, safe='')}&socket_timeout={MARK}x",
        f"redis://app:{MARK}pw@{host}:{MARK}port/0",
        f"redis://app:{MARK}pw@[{MARK}/0",
        f"redis://app:{MARK}pw@/0",
        f"{MARK}scheme://app:{MARK}pw@{host}",
        NON_URL,
        f"{MARK}://",
        f"redis://app:{MARK}pw@{host}/0#{MARK}frag",
        *one_char,
    ]


def leaked(*texts: object) -> list[str]:
    """The texts that contain a secret fragment (empty: nothing leaked)."""
    return [str(t) for t in texts if MARK in str(t)]
