"""How jobs look to people: a compact HTML table in Jupyter, live progress in a notebook or a terminal.

Progress is shown only where someone watches: in a Jupyter kernel (an HTML display updated in place, no widgets
needed) or when stderr is a terminal (a ``rich`` progress bar). ``HPCBRIDGE_PROGRESS=0`` turns it off, ``=1`` on.
All updates happen in the waiting (main) thread.
"""

from __future__ import annotations

import concurrent.futures
import html
import importlib
import os
import sys
import time
from typing import Any, Dict, Optional, Protocol, Sequence, cast

from .state import JobState


class JobView(Protocol):
    """What a display reads of a job (:class:`hpcbridge.job.Job` is one): nothing here imports the futures side."""

    @property
    def job_id(self) -> str: ...

    @property
    def site(self) -> str: ...

    @property
    def nodes(self) -> str: ...

    @property
    def elapsed(self) -> Optional[float]: ...

    state: JobState

    def done(self) -> bool: ...


MAX_ROWS = 20

_COLOURS = {
    JobState.PENDING: "#8a6d00",
    JobState.RUNNING: "#0b5cad",
    JobState.COMPLETED: "#1a7f37",
    JobState.UNKNOWN: "#6e7781",
}
_FAIL_COLOUR = "#cf222e"


def format_elapsed(seconds: Optional[float]) -> str:
    """``4.2s``, ``1m05s``, ``2h03m``; an empty string for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def state_counts(jobs: Sequence[JobView]) -> Dict[str, int]:
    """How many jobs are in each state, e.g. ``{'COMPLETED': 8, 'RUNNING': 2}``."""
    counts: Dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    return counts


def _badge(state: JobState) -> str:
    colour = _COLOURS.get(state, _FAIL_COLOUR)
    return f'<span style="color:{colour};font-weight:600">{html.escape(state.value)}</span>'


def image_label(record: Optional[Dict[str, Any]]) -> str:
    """``IMAGE@DIGEST12`` (the digest's first 12 hex digits) for a job's container record, '' for none."""
    if not record:
        return ""
    digest = str(record.get("digest") or "")
    return str(record.get("image", "")) + (f"@{digest.split(':')[-1][:12]}" if digest else "")


def jobs_html(jobs: Sequence[JobView], max_rows: int = MAX_ROWS) -> str:
    """A compact table: state, job id, nodes, elapsed (one row per job, at most ``max_rows``), the image of
    jobs that run in a container, and, once jobs' usage is known, the CPU, memory, time and GPU efficiency columns
    and the picture of allocated against used (:mod:`hpcbridge.usage_figure`)."""
    from .usage_figure import EFFICIENCY_COLUMNS, efficiency_cells, known_usage, usage_figure

    cell = 'style="text-align:left;padding:1px 8px"'
    images = any(getattr(job, "image", "") for job in jobs)
    usages = [known_usage(job) for job in list(jobs)[:max_rows]]
    measured = any(u is not None for u in usages)
    rows = []
    for job, usage in zip(list(jobs)[:max_rows], usages):
        image = f"<td {cell}><code>{html.escape(getattr(job, 'image', ''))}</code></td>" if images else ""
        eff = "".join(f"<td {cell}>{c}</td>" for c in efficiency_cells(usage)) if measured else ""
        rows.append(
            f"<tr><td {cell}>{_badge(job.state)}</td><td {cell}><code>{html.escape(job.job_id)}</code></td>"
            f"<td {cell}>{html.escape(job.nodes)}</td><td {cell}>{format_elapsed(job.elapsed)}</td>{image}{eff}</tr>"
        )
    more = len(jobs) - max_rows
    if more > 0:
        span = 4 + bool(images) + (len(EFFICIENCY_COLUMNS) if measured else 0)
        rows.append(f'<tr><td {cell} colspan="{span}">... {more} more</td></tr>')
    sites = sorted({job.site for job in jobs})
    summary = ", ".join(f"{n} {s}" for s, n in state_counts(jobs).items())
    caption = (
        f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} on {html.escape(', '.join(sites))}: {html.escape(summary)}"
        if len(jobs) != 1
        else f"job on {html.escape(', '.join(sites))}"
    )
    columns = ("state", "job id", "nodes", "elapsed") + (("image",) if images else ())
    columns += EFFICIENCY_COLUMNS if measured else ()
    head = "".join(f"<th {cell}>{h}</th>" for h in columns)
    figure = usage_figure([(job.job_id, u) for job, u in zip(jobs, usages) if u is not None]) if measured else ""
    return (
        '<table class="hpcbridge-jobs" style="border-collapse:collapse;font-size:90%">'
        f'<caption style="text-align:left">{caption}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{figure}"
    )


# -- progress ---------------------------------------------------------------------------------------------------
class Progress:
    """No display: waiting only. The base for the notebook and terminal displays."""

    def __init__(self, jobs: Sequence[JobView], label: str) -> None:
        self.jobs = jobs
        self.label = label
        self.started = time.monotonic()

    def wait(self, job: JobView, timeout: Optional[float] = None) -> None:
        """Block until ``job`` is done (or ``timeout``), refreshing the display meanwhile (no-op here)."""

    def refresh(self, final: bool = False) -> None:
        """Redraw (display kinds only)."""

    def close(self) -> None:
        """Draw the final state and stop."""

    def counts(self) -> Dict[str, int]:
        return state_counts(self.jobs)

    def done(self) -> int:
        return sum(1 for job in self.jobs if job.done())


class _Shown(Progress):
    def wait(self, job: JobView, timeout: Optional[float] = None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        while not job.done():
            left = 0.5 if end is None else min(0.5, end - time.monotonic())
            if left <= 0:
                break
            concurrent.futures.wait([cast("concurrent.futures.Future[Any]", job)], left)
            self.refresh()
        self.refresh()


class NotebookProgress(_Shown):
    """An HTML progress line in the output of the running cell, updated in place."""

    def __init__(self, jobs: Sequence[JobView], label: str) -> None:
        super().__init__(jobs, label)
        self._display = importlib.import_module("IPython.display")
        self._last = ""
        self._handle = self._display.display(self.bundle(), raw=True, display_id=True)

    def bundle(self) -> Dict[str, str]:
        """The output as HTML (a progress bar) and as plain text, for front-ends without HTML."""
        total = len(self.jobs)
        done = self.done()
        states = " · ".join(f"{n} {s}" for s, n in self.counts().items())
        elapsed = format_elapsed(time.monotonic() - self.started)
        text = f"{self.label}: {done}/{total} done · {states} · {elapsed}"
        markup = (
            f'<div class="hpcbridge-progress"><progress value="{done}" max="{total}" style="width:16em"></progress> '
            f"<b>{html.escape(self.label)}</b> {done}/{total} done · {html.escape(states)} · {elapsed}</div>"
        )
        return {"text/plain": text, "text/html": markup}

    def refresh(self, final: bool = False) -> None:
        data = self.bundle()
        if data["text/plain"] != self._last:
            self._last = data["text/plain"]
            self._handle.update(data, raw=True)

    def close(self) -> None:
        self.refresh(final=True)


class TerminalProgress(_Shown):
    """A rich progress bar on stderr."""

    def __init__(self, jobs: Sequence[JobView], label: str) -> None:
        super().__init__(jobs, label)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[states]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task(label, total=len(jobs), states="")
        self._bar.start()
        self.refresh()

    def refresh(self, final: bool = False) -> None:
        states = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        self._bar.update(self._task, completed=self.done(), states=states)

    def close(self) -> None:
        self.refresh(final=True)
        self._bar.stop()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (ipykernel), where HTML output is displayed."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_for(jobs: Sequence[JobView], label: str, enabled: Optional[bool] = None) -> Progress:
    """The right progress display for where we run: notebook, terminal, or none.

    ``enabled``: True forces a display, False turns it off, None decides (``HPCBRIDGE_PROGRESS``, then whether
    this is a notebook or stderr a terminal).
    """
    if enabled is None:
        env = os.environ.get("HPCBRIDGE_PROGRESS", "").strip().lower()
        if env in ("0", "false", "no", "off"):
            enabled = False
        elif env in ("1", "true", "yes", "on"):
            enabled = True
    notebook = in_notebook()
    if enabled is None:
        enabled = notebook or _stderr_is_tty()
    if not enabled or not jobs:
        return Progress(jobs, label)
    try:
        return NotebookProgress(jobs, label) if notebook else TerminalProgress(jobs, label)
    except Exception:  # a display must never break a map
        return Progress(jobs, label)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def describe(obj: Any) -> str:
    """A short label for a callable: its qualified name."""
    return str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__)
