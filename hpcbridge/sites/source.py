"""TOML text of a site-config: parsing it, and finding the line that sets a key (pure: text in, no file reads).

Every error message about a site-config names ``file:line``; this module is what turns a key path into a line.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_toml(text: str, path: str) -> Dict[str, Any]:
    """``text`` parsed as TOML; a syntax error names ``path``, the line and the column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        where = f"{path}:{m.group(1)}:{m.group(2)}" if m else path
        msg = msg[: m.start()] if m else msg
        raise ConfigError(f"{where}: not valid TOML: {msg}") from None


class Source:
    """A parsed file, for error messages and ``--origin``: ``where(("partitions", "gpu"))`` -> ``file:line``."""

    def __init__(self, path: str, text: str, prefix: Tuple[str, ...] = (), label: str = "") -> None:
        self.path = path
        self.text = text
        self.prefix = prefix
        self.label = label

    def where(self, keypath: Sequence[str]) -> str:
        line = find_line(self.text, tuple(self.prefix) + tuple(keypath))
        where = f"{self.path}:{line}" if line else self.path
        return f"{where} ({self.label})" if self.label else where


_HEADER = re.compile(r"^\s*\[\[?([^\[\]]+)\]\]?\s*(?:#.*)?$")
_BARE = r"""(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')"""
_KEYLINE = re.compile(rf"^\s*({_BARE}(?:\s*\.\s*{_BARE})*)\s*=")
_PART = re.compile(r"""\s*([A-Za-z0-9_\-]+|"[^"]*"|'[^']*')\s*(?:\.|$)""")


def _dotted(text: str) -> Tuple[str, ...]:
    return tuple(m.group(1).strip("\"'") for m in _PART.finditer(text))


def find_line(text: str, keypath: Tuple[str, ...]) -> Optional[int]:
    """The line (1-based) that sets ``keypath``, or the closest table header; None if not found.

    A best-effort scan of table headers and ``key = value`` lines, enough to point an admin at the right line.
    """
    current: Tuple[str, ...] = ()
    best: Tuple[int, int] = (0, 0)
    for number, raw in enumerate(text.splitlines(), 1):
        header = _HEADER.match(raw)
        if header:
            current = _dotted(header.group(1))
            full = current
        else:
            keyline = _KEYLINE.match(raw)
            if not keyline:
                continue
            full = current + _dotted(keyline.group(1))
        if full == keypath:
            return number
        n = 0
        while n < min(len(full), len(keypath)) and full[n] == keypath[n]:
            n += 1
        if n and (n == len(full) or n == len(keypath)) and n > best[0]:
            best = (n, number)
    return best[1] or None
