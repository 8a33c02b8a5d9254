"""A job or group display that updates in place from the executor's own poller: no scheduler query of its own.

``watch(job_or_jobs)`` shows, in a Jupyter notebook, one output that is redrawn after every tick of the poller
that already watches those jobs (:meth:`hpcbridge.poll.Poller.listen`): each job's state, while it waits the
queue's reason and the estimated start (the poller's status command carries them: Slurm's squeue ``%r`` and
``%S``), its nodes and elapsed time, the usage figures once the poller has gathered them, and whether this kernel
runs inside a batch job itself (:mod:`hpcbridge.here`). ``tail()`` reads a job's standard output on demand (one
file read, no scheduler query). Outside a notebook nothing is drawn; ``str()`` gives the same text.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .display import MAX_ROWS, _badge, format_elapsed, in_notebook, state_counts
from .here import Enclosing, here
from .job import Job
from .poll import Poller
from .state import JobState

#: how long a display goes on listening for a finished job's usage figures before it lets go of the poller
USAGE_PATIENCE_S = 120.0
_CELL = 'style="text-align:left;padding:1px 8px"'


def usage_text(usage: Any) -> str:
    """A job's usage figures in a few words (``CPU 48% · mem 12% · time 3%``), '' when there are none yet.

    Read from what the poller gathered (``job._usage``, hpcbridge's usage figures): never a query."""
    if usage is None:
        return ""
    parts = []
    for label, name in (("CPU", "cpu_efficiency"), ("mem", "mem_efficiency"), ("time", "time_efficiency")):
        value = getattr(usage, name, None)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value * 100:.0f}%")
    return " · ".join(parts) if parts else str(usage)


def queue_text(job: Job) -> str:
    """``BeginTime, est. start 2026-12-06T13:26:10`` for a waiting job, '' otherwise."""
    if job.done() or job.state is not JobState.PENDING:
        return ""
    parts = [job.queue_reason] if job.queue_reason else []
    if job.start_estimate:
        parts.append(f"est. start {job.start_estimate}")
    return ", ".join(parts)


def job_line(job: Job, timeless: bool = False) -> str:
    """One job in plain text: ``8218 PENDING (BeginTime, est. start 2026-12-06T13:26:10) 12.3s`` (``timeless``:
    without the elapsed time)."""
    waiting = queue_text(job)
    nodes = f" on {job.nodes}" if job.nodes and not waiting else ""
    usage = usage_text(getattr(job, "_usage", None))
    elapsed = "" if timeless else f" {format_elapsed(job.elapsed)}".rstrip()
    return (f"{job.job_id} {job.state.value}" + (f" ({waiting})" if waiting else "") + nodes + elapsed
            + (f" · usage {usage}" if usage else ""))


def caption(jobs: Sequence[Job]) -> str:
    sites = ", ".join(sorted({job.site for job in jobs}))
    if len(jobs) == 1:
        return f"job on {sites}"
    summary = ", ".join(f"{n} {s}" for s, n in state_counts(jobs).items())
    return f"{len(jobs)} jobs on {sites}: {summary}"


def live_text(jobs: Sequence[Job], enclosing: Optional[Enclosing], timeless: bool = False) -> str:
    """The display as plain text: the caption, where this kernel runs, one line per job (at most MAX_ROWS);
    ``timeless``: without the clocks (elapsed, time left), as :attr:`LiveJobs.drawn` keeps it."""
    lines = [caption(jobs)]
    if enclosing is not None:
        where = dataclasses.replace(enclosing, left_s=None) if timeless else enclosing
        lines.append(f"this kernel runs {where.line()}")
    lines += [job_line(job, timeless) for job in list(jobs)[:MAX_ROWS]]
    if len(jobs) > MAX_ROWS:
        lines.append(f"... {len(jobs) - MAX_ROWS} more")
    return "\n".join(lines)


def live_html(jobs: Sequence[Job], enclosing: Optional[Enclosing]) -> str:
    """The display as HTML: a table (state, job id, queue, nodes, elapsed, and usage once known) under a caption
    that says where this kernel runs."""
    shown = list(jobs)[:MAX_ROWS]
    usages = [usage_text(getattr(job, "_usage", None)) for job in shown]
    columns = ["state", "job id", "queue", "nodes", "elapsed"] + (["usage"] if any(usages) else [])
    rows = []
    for job, usage in zip(shown, usages):
        cells = [_badge(job.state), f"<code>{html.escape(job.job_id)}</code>", html.escape(queue_text(job)),
                 html.escape(job.nodes), format_elapsed(job.elapsed)] + ([html.escape(usage)] if any(usages) else [])
        rows.append("<tr>" + "".join(f"<td {_CELL}>{c}</td>" for c in cells) + "</tr>")
    if len(jobs) > MAX_ROWS:
        rows.append(f'<tr><td {_CELL} colspan="{len(columns)}">... {len(jobs) - MAX_ROWS} more</td></tr>')
    where = (f'<div class="hpcbridge-here">this kernel runs {html.escape(enclosing.line())}</div>'
             if enclosing is not None else "")
    head = "".join(f"<th {_CELL}>{c}</th>" for c in columns)
    return (
        f'<div class="hpcbridge-live">{where}'
        '<table class="hpcbridge-jobs" style="border-collapse:collapse;font-size:90%">'
        f'<caption style="text-align:left">{html.escape(caption(jobs))}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


class StdoutTail:
    """The last lines of a job's standard output, as read when asked (``LiveJobs.tail``)."""

    def __init__(self, job_id: str, text: str) -> None:
        self.job_id = job_id
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<stdout of {self.job_id}, {len(self.text.splitlines())} lines>"

    def _repr_html_(self) -> str:
        return (f'<div class="hpcbridge-tail"><b>stdout of {html.escape(self.job_id)}</b>'
                f"<pre>{html.escape(self.text)}</pre></div>")


class LiveJobs:
    """A live display of jobs, redrawn by the poller that watches them (see the module's docstring)."""

    def __init__(self, jobs: Sequence[Job], publish: Optional[bool] = None) -> None:
        self.jobs: List[Job] = list(jobs)
        #: the batch job this kernel runs inside (found once per process), or None
        self.enclosing = here()
        #: what was drawn, without the clocks, each time something else changed (a state, reason, estimate, usage)
        self.drawn: List[str] = []
        #: how many times the output was redrawn
        self.updates = 0
        self._lock = threading.RLock()
        self._settled = threading.Event()
        self._signature = ""
        self._text = ""
        self._all_done_at: Optional[float] = None
        self._handle: Any = None
        self._update: Optional[Callable[[Dict[str, str]], None]] = None
        if publish if publish is not None else in_notebook():
            ipy = importlib.import_module("IPython.display")
            self._handle = ipy.display(self.bundle(), raw=True, display_id=True)
            self._update = lambda data: self._handle.update(data, raw=True)
        self.pollers: List[Poller] = []
        for job in self.jobs:
            poller = getattr(getattr(job.submission, "backend", None), "poller", None)
            if isinstance(poller, Poller) and all(poller is not p for p in self.pollers):
                self.pollers.append(poller)
        done = all(job.done() for job in self.jobs)
        if not done:  # finished jobs: their poller may have stopped already
            for poller in self.pollers:
                poller.listen(self._on_tick)
        for job in self.jobs:
            job.add_done_callback(lambda _: self.refresh())
        self.refresh(settle=done)

    # -- drawing ------------------------------------------------------------------------------------------
    def bundle(self) -> Dict[str, str]:
        return {"text/plain": live_text(self.jobs, self.enclosing), "text/html": live_html(self.jobs, self.enclosing)}

    def refresh(self, settle: bool = False) -> None:
        """Redraw now (the poller does this after every tick; ``settle``: the tick is over, so a finished job's
        last facts, such as the hosts that wrote its results, are in)."""
        with self._lock:
            data = self.bundle()
            if data["text/plain"] != self._text:
                self._text = data["text/plain"]
                self.updates += 1
                if self._update is not None:
                    self._update(data)
            timeless = live_text(self.jobs, self.enclosing, timeless=True)
            if timeless != self._signature:
                self._signature = timeless
                self.drawn.append(timeless)
            if settle and all(job.done() for job in self.jobs):
                self._all_done_at = self._all_done_at or time.monotonic()
                self._settled.set()

    def _on_tick(self) -> bool:
        self.refresh(settle=True)
        return not self._finished()

    def _finished(self) -> bool:
        """All done, and each job's usage is in (or nobody gathers it, or we waited long enough for it)."""
        if self._all_done_at is None:
            return False
        usage_due = any(hasattr(job, "usage") and getattr(job, "_usage", None) is None for job in self.jobs)
        return not usage_due or time.monotonic() - self._all_done_at > USAGE_PATIENCE_S

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until every job finished and its final state is drawn (after the poller's tick that resolved the last
        one); True if that happened within ``timeout``."""
        return self._settled.wait(timeout)

    def close(self) -> None:
        """Stop listening to the poller (a finished display lets go by itself)."""
        for poller in self.pollers:
            with poller.lock:
                if self._on_tick in poller.listeners:
                    poller.listeners.remove(self._on_tick)

    # -- on demand ----------------------------------------------------------------------------------------
    def tail(self, job: Union[int, Job] = 0, lines: int = 20) -> StdoutTail:
        """The last ``lines`` of a job's standard output so far (``job``: one of these jobs, or its index): one
        read of its log file through the transport, no scheduler query."""
        chosen = self.jobs[job] if isinstance(job, int) else job
        text = chosen.stdout(max_bytes=64 * 1024)
        return StdoutTail(chosen.job_id, "\n".join(text.splitlines()[-lines:]))

    def poller_queries(self) -> int:
        """The scheduler status queries made so far by the pollers these jobs belong to (the display makes none)."""
        return sum(p.queries for p in self.pollers)

    def __str__(self) -> str:
        return live_text(self.jobs, self.enclosing)

    def __repr__(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in state_counts(self.jobs).items())
        return f"<live display of {len(self.jobs)} job{'s' if len(self.jobs) != 1 else ''}: {states}>"


def watch(jobs: Union[Job, Sequence[Job]], publish: Optional[bool] = None) -> LiveJobs:
    """Show ``jobs`` (a Job, a JobGroup or a list of Jobs) in the notebook, updated in place by their executor's
    poller until they finished (and their usage figures are in). ``publish``: draw (True) or not (False); by
    default only in a Jupyter kernel."""
    return LiveJobs([jobs] if isinstance(jobs, Job) else list(jobs), publish=publish)
