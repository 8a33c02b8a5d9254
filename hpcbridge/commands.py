"""What ``hpcbridge submit`` runs in the job: a command (argv, no shell) or a Python file.

The job imports these by name (``hpcbridge.commands.run_command``), so they stay light: the standard library only,
and :class:`~hpcbridge.errors.UserCommandError` imported when a command fails, not on every job start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:
    from .errors import UserCommandError


def run_command(argv: List[str]) -> int:
    """Run ``argv`` in the job (its output goes to the job's log): 0, or UserCommandError for a non-zero exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        child = subprocess.Popen(list(argv))  # noqa: S603 - an argv list the user gave, no shell
    except OSError as exc:
        print(f"hpcbridge: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        raise _failed(argv, 127) from None
    # requeue on: the worker has installed hpcbridge.checkpoint's warning handler (not imported otherwise)
    warned = _forward_warning(child) if "hpcbridge.checkpoint" in sys.modules else None
    code = child.wait()
    if code != 0 and warned is not None and warned():
        # requeue on (hpcbridge submit --requeue N): the command was warned and left; it is restarted from scratch
        from .errors import StopForRequeue

        raise StopForRequeue(f"the command exited {code} after the warning: it is requeued")
    if code != 0:
        raise _failed(argv, code)
    return 0


def _forward_warning(child: subprocess.Popen[bytes]) -> Any:
    """Forward the batch shell's warning (USR2, docs/requeue.md) to the command; returns whether it came."""
    import signal

    from . import checkpoint

    def forward(signum: int, frame: Any) -> None:
        checkpoint._on_warning(signum, frame)
        try:
            child.send_signal(signum)
        except OSError:
            pass

    signal.signal(checkpoint.STOP_SIGNAL, forward)
    return checkpoint.should_stop


def run_script(path: str, source: str, args: List[str]) -> Any:
    """Run a Python file's ``source`` as ``__main__`` with ``sys.argv = [path, *args]``.

    The source travels with the job, so the file need not be visible on the cluster; its folder is put first on
    ``sys.path`` for sibling imports where it is. ``sys.exit(n)`` with n != 0 fails the job (UserCommandError).
    """
    code = compile(source, path, "exec")
    namespace: Dict[str, Any] = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    old_argv = sys.argv
    sys.argv = [path, *args]
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        sys.path.insert(0, folder)
    try:
        exec(code, namespace)  # noqa: S102 - running the user's script is the point
    except SystemExit as exc:
        status: Optional[Any] = exc.code
        if status not in (None, 0):
            if not isinstance(status, int):
                print(status, file=sys.stderr)
                status = 1
            raise _failed([path, *args], status) from None
    finally:
        sys.argv = old_argv
        sys.stdout.flush()
    return None


def _failed(argv: List[str], status: int) -> UserCommandError:
    """The job's error for a non-zero exit; errors.py is imported here, not on every job start."""
    from .errors import UserCommandError

    return UserCommandError(argv, status)
