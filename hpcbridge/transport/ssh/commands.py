"""Remote command lines: each argument quoted once for the login shell, the login noise framed off, and which
commands are safe to run again after a dropped connection. Pure (tests/unit/test_ssh_config.py).
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import AbstractSet, List, Mapping, Optional, Sequence, Tuple

from ...errors import ConfigError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")

#: commands without side effects on any cluster: retried on a new connection when the old one dropped. Each
#: scheduler adapter adds its own queries (``Scheduler.safe_commands``; ``make_transport`` joins them)
SAFE_COMMANDS = frozenset(
    {"true", "hostname", "uname", "id", "whoami", "cat", "ls", "stat", "test", "echo", "printf", "pwd"}
)


def command_line(script: str, args: Sequence[str], marker: str) -> str:
    """The one command line sent in an exec request: ``exec /bin/sh -c SCRIPT hpcbridge ARGS...``.

    The login shell (bash, zsh, csh, fish ...) only parses this line; ``/bin/sh`` runs ``script`` with ``args`` as
    ``"$1" ...``, so every argument is quoted exactly once (``shlex.quote``) and never re-parsed. The script first
    prints ``marker`` on stdout and stderr: whatever the login shell's startup files printed comes before it and is
    cut off (:func:`after_marker`).
    """
    for a in args:
        if "\x00" in a:
            raise ConfigError(f"a remote command argument may not contain a NUL byte: {a!r}")
    prefix = f"printf '%s\\n' {marker}; printf '%s\\n' {marker} >&2; "
    words = ["exec", "/bin/sh", "-c", prefix + script, "hpcbridge", *args]
    return " ".join(shlex.quote(w) for w in words)


#: run(argv): optional cd, then the command itself (a missing one is reported in a form we recognise)
RUN_SCRIPT = (
    'if [ "$1" = -C ]; then cd -- "$2" || exit 126; shift 2; else shift 1; fi; '
    'command -v -- "$1" >/dev/null 2>&1 || { printf "hpcbridge: command not found: %s\\n" "$1" >&2; exit 127; }; '
    'exec "$@"'
)
NOT_FOUND = "hpcbridge: command not found: "


def run_args(argv: Sequence[str], env: Optional[Mapping[str, str]], cwd: Optional[str]) -> List[str]:
    """Arguments for :data:`RUN_SCRIPT`: ``-C DIR`` or ``-``, then ``env K=V ...`` when there is an environment."""
    argv = [str(a) for a in argv]
    if not argv or not argv[0]:
        raise ConfigError("empty command")
    out = ["-C", cwd] if cwd else ["-"]
    if env:
        bad = [k for k in env if not _ENV_NAME.match(k)]
        if bad:
            raise ConfigError(f"environment variable names must be letters, digits and _: {bad}")
        if "=" in argv[0]:
            raise ConfigError(f"command name may not contain '=' when an environment is given: {argv[0]!r}")
        out += ["env", *(f"{k}={v}" for k, v in env.items())]
    return out + argv


def after_marker(data: bytes, marker: str) -> Optional[bytes]:
    """What follows the first ``marker`` line (None if the marker never came: the command did not start)."""
    token = marker.encode() + b"\n"
    at = data.find(token)
    if at < 0:
        return None
    return data[at + len(token) :]


def expand_user_arg(path: str) -> Tuple[str, str]:
    """``~`` / ``~/x`` / ``~name/x`` -> (``name`` or ``""``, rest); raise for a user name that is not plain."""
    head, sep, rest = path[1:].partition("/")
    if head and not _USER_NAME.match(head):
        raise ConfigError(f"cannot expand {path!r}: {head!r} is not a user name")
    return head, (sep + rest)


def check_remote_path(path: str, what: str) -> None:
    """Refuse a remote path the file operations cannot pass on safely (relative, or with a newline or NUL)."""
    if "\n" in path or "\x00" in path:
        raise ConfigError(f"{what}: a path with a newline or NUL byte is not supported: {path!r}")
    if not path.startswith("/"):
        raise ConfigError(f"{what}: remote paths must be absolute (expand ~ first): {path!r}")


def umask_for(mode: int) -> str:
    """The umask (three octal digits) under which new files and folders get ``mode``."""
    return f"{(~mode) & 0o777:03o}"


def is_safe(argv: Sequence[str], safe_commands: AbstractSet[str] = SAFE_COMMANDS) -> bool:
    """Whether a command can be run again after a drop without doing anything twice (reads and queries).

    An entry of two words, ``"scontrol show"``, allows a program with that first word (options before it are
    skipped: ``scontrol --oneliner show job 5``)."""
    if not argv:
        return False
    name = posixpath.basename(argv[0])
    if name in safe_commands:
        return True
    words = [a for a in argv[1:3] if not a.startswith("-")]
    return bool(words) and f"{name} {words[0]}" in safe_commands
