"""What the ``hpcbridge`` subcommands share: exit codes, the user-facing error, output to a terminal or a pipe."""

from __future__ import annotations

import json
import sys
from typing import Any, List, Optional, Sequence

from ..errors import HpcBridgeError

OK, JOB_FAILED, USAGE, SCHEDULER, NOT_FOUND, STILL_RUNNING, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 4, 5, 70, 130


class CliError(HpcBridgeError):
    """A user-facing error of the command line: one line, a hint, an exit code."""

    def __init__(self, message: str, hint: str = "", code: int = USAGE) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


# -- output -----------------------------------------------------------------------------------------------------
class Out:
    """Rich on a terminal; plain, tab-separated and header-less when piped; JSON on request."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.tty = _isatty(sys.stdout)
        self.err_tty = _isatty(sys.stderr)
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def human(self, text: str) -> None:
        """A message for people: printed on a terminal only."""
        if self.tty and not self.json_mode:
            self.console.print(text)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=1 if self.tty else None, default=str), flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], styles: Optional[List[str]] = None) -> None:
        if not self.tty:
            for row in rows:
                print("\t".join(str(c) for c in row))
            sys.stdout.flush()
            return
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for header in headers:
            table.add_column(header)
        for i, row in enumerate(rows):
            table.add_row(*[str(c) for c in row], style=(styles[i] if styles else None))
        self.console.print(table)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


STATE_STYLES = {
    "PENDING": "yellow",
    "RUNNING": "blue",
    "COMPLETED": "green",
    "UNKNOWN": "dim",
}


def state_style(state: str) -> str:
    """The rich style of a job state: green done, blue running, yellow queued, red ended badly."""
    return STATE_STYLES.get(state, "red")


def report(message: str, hint: str) -> None:
    """An error as the command prints it: one line on stderr, and a hint line if there is one."""
    print(f"hpcbridge: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
