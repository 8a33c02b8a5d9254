"""Slurm hostlist expressions, expanded in full (pure; imported inside jobs: standard library and hpcbridge.errors).

    >>> expand("node[1-3,10]")
    ['node1', 'node2', 'node3', 'node10']
    >>> expand("gpu-a[01-04]")
    ['gpu-a01', 'gpu-a02', 'gpu-a03', 'gpu-a04']
    >>> expand("rack[1-2]-n[01-02],login-1")
    ['rack1-n01', 'rack1-n02', 'rack2-n01', 'rack2-n02', 'login-1']

The grammar is Slurm's: a comma list at the top level (commas inside brackets do not split), each item a name
with any number of bracket groups, each group a comma list of numbers and ``lo-hi`` ranges. A range is zero-padded
to the width of its lower bound, as Slurm does (``[08-10]`` -> 08 09 10, ``[8-010]`` -> 8 9 10). Several groups
expand as a product, leftmost slowest (``a[1-2]b[3-4]`` -> a1b3 a1b4 a2b3 a2b4). Order and duplicates are kept.

Lightning's bugs (#1943 names with dashes, #5160 plain names, #14896 ``linux[1,2]``) all came from regexes over
``SLURM_NODELIST``; this is a small parser instead, cross-checked against ``scontrol show hostnames`` in the tests.
"""

from __future__ import annotations

import itertools
from typing import Iterable, List

from .errors import HostlistError as HostlistError  # re-exported: it lived here

#: refuse expressions that would expand to more names than this (a typo such as ``n[1-99999999]``)
MAX_HOSTS = 1_000_000


def expand(hostlist: str) -> List[str]:
    """Every host name of a Slurm hostlist expression, in order (duplicates kept)."""
    if not isinstance(hostlist, str):
        raise HostlistError(f"hostlist must be a string, not {type(hostlist).__name__}")
    out: List[str] = []
    for item in _split_top(hostlist):
        out.extend(_expand_item(item, hostlist))
        if len(out) > MAX_HOSTS:
            raise HostlistError(f"hostlist {hostlist!r} expands to more than {MAX_HOSTS} hosts")
    return out


def expand_unique(hostlist: str) -> List[str]:
    """Like :func:`expand`, without repeats (first occurrence wins)."""
    return unique(expand(hostlist))


def unique(names: Iterable[str]) -> List[str]:
    """``names`` without repeats, first occurrence first."""
    seen = set()
    out = []
    for name in names:
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _split_top(text: str) -> List[str]:
    """Split at commas outside brackets; empty items (``a,,b``, a trailing comma, blanks) are dropped."""
    items: List[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise HostlistError(f"hostlist {text!r}: nested '[' at position {i}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"hostlist {text!r}: ']' without '[' at position {i}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"hostlist {text!r}: '[' is not closed")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_item(item: str, whole: str) -> List[str]:
    """One name with zero or more bracket groups -> its names (product of the groups, leftmost slowest)."""
    parts: List[List[str]] = []
    rest = item
    while rest:
        open_at = rest.find("[")
        text = rest if open_at < 0 else rest[:open_at]
        if any(ch.isspace() for ch in text):
            raise HostlistError(f"hostlist {whole!r}: {item!r} holds whitespace")
        if text:
            parts.append([text])
        if open_at < 0:
            break
        close_at = rest.index("]", open_at)  # balanced: checked by _split_top
        parts.append(_expand_group(rest[open_at + 1 : close_at], whole))
        rest = rest[close_at + 1 :]
    count = 1
    for p in parts:
        count *= len(p)
    if count > MAX_HOSTS:
        raise HostlistError(f"hostlist {whole!r} expands to more than {MAX_HOSTS} hosts")
    return ["".join(combo) for combo in itertools.product(*parts)]


def _expand_group(group: str, whole: str) -> List[str]:
    """The inside of one bracket group: ``1-3,10`` or ``01-04`` -> the number strings."""
    out: List[str] = []
    for piece in group.split(","):
        piece = piece.strip()
        if not piece:
            raise HostlistError(f"hostlist {whole!r}: empty entry in [{group}]")
        lo, sep, hi = piece.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or not lo.isascii() or not hi.isascii():
            raise HostlistError(f"hostlist {whole!r}: {piece!r} in [{group}] is not a number or a lo-hi range")
        if not sep:
            out.append(lo)
            continue
        low, high = int(lo), int(hi)
        if high < low:
            raise HostlistError(f"hostlist {whole!r}: range {piece!r} runs backwards")
        if high - low >= MAX_HOSTS:
            raise HostlistError(f"hostlist {whole!r}: range {piece!r} is larger than {MAX_HOSTS} hosts")
        width = len(lo)
        out.extend(f"{n:0{width}d}" for n in range(low, high + 1))
    return out


def tasks_per_node(spec: str) -> List[int]:
    """Slurm's compressed task counts (``SLURM_TASKS_PER_NODE``): ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    out: List[int] = []
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            continue
        count, _, times = piece.partition("(x")
        try:
            n = int(count)
            k = int(times.rstrip(")")) if times else 1
        except ValueError:
            raise HostlistError(f"task count {spec!r}: {piece!r} is not N or N(xK)") from None
        out.extend([n] * k)
    return out
