"""The waste report (pure): per job and in total, the core-hours and GPU-hours allocated, used and wasted, counting
jobs that failed, were cancelled or timed out, and the advice beside each function (``hpcbridge report``, the
notebook tables).

- allocated core-hours: CPUs x elapsed; used: CPU time; wasted: allocated - used (never below 0);
- allocated GPU-hours: GPUs x elapsed; used: that x the mean GPU utilisation (unknown without GPU data);
- a job that did not complete (failed, cancelled, timed out, out of memory, node failure, preempted): all it used is
  also counted as ``lost`` (its result is gone), beside its waste;
- a job that requeue restarted (docs/requeue.md): the allocation of every run counts, and the work each interruption
  recomputed (each interrupted run's core-hours after its last checkpoint) is counted as ``recomputed``: busy, yet
  wasted, beside the idle hours (its own line under the table, and ``core_hours_recomputed`` in the JSON).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .advice import Advice, state_name
from .usage import Usage


@dataclasses.dataclass(frozen=True)
class Row:
    """One job of the report."""

    job_id: str
    site: str
    function: str
    state: str
    cpus: Optional[int]
    gpus: Optional[int]
    elapsed_s: Optional[float]
    core_hours_allocated: float
    core_hours_used: Optional[float]
    core_hours_wasted: Optional[float]
    gpu_hours_allocated: float
    gpu_hours_used: Optional[float]
    cpu_efficiency: Optional[float]
    mem_efficiency: Optional[float]
    time_efficiency: Optional[float]
    gpu_utilization: Optional[float]
    completed: bool
    #: the work its interruptions recomputed (0 for a job that ran once; None: not measured)
    core_hours_recomputed: Optional[float] = 0.0
    runs: int = 1

    @property
    def core_hours_lost(self) -> float:
        """The core-hours of a job that did not complete (what it did is gone); 0 for a completed one."""
        return 0.0 if self.completed else self.core_hours_allocated


@dataclasses.dataclass(frozen=True)
class Totals:
    jobs: int
    completed: int
    not_completed: Dict[str, int]
    core_hours_allocated: float
    core_hours_used: float
    core_hours_wasted: float
    core_hours_lost: float
    gpu_hours_allocated: float
    gpu_hours_used: Optional[float]
    core_hours_recomputed: float = 0.0
    #: the interruptions (runs after the first) of the jobs
    interruptions: int = 0

    @property
    def cpu_efficiency(self) -> Optional[float]:
        return self.core_hours_used / self.core_hours_allocated if self.core_hours_allocated else None


@dataclasses.dataclass(frozen=True)
class Report:
    rows: List[Row]
    totals: Totals
    #: function -> its advice
    advice: Dict[str, Advice]

    def as_json(self) -> Dict[str, Any]:
        """What ``hpcbridge report --json`` prints."""
        return {
            "jobs": [
                {**dataclasses.asdict(r), "core_hours_lost": r.core_hours_lost,
                 "advice": self.advice[r.function].resources() if r.function in self.advice else {}}
                for r in self.rows
            ],
            "total": {**dataclasses.asdict(self.totals), "cpu_efficiency": self.totals.cpu_efficiency},
            "advice": {fn: {"runs": a.runs, "resources": a.resources(), "lines": a.lines}
                       for fn, a in self.advice.items()},
        }


def row_of(usage: Usage, site: str = "", function: str = "") -> Row:
    """One report row from a job's usage (its own hours and efficiencies, :class:`~hpcbridge.usage.Usage`)."""
    state = state_name(usage)
    return Row(
        job_id=usage.job_id,
        site=site,
        function=function,
        state=state,
        cpus=usage.cpus,
        gpus=usage.gpus,
        elapsed_s=usage.elapsed_s,
        core_hours_allocated=usage.core_hours_allocated or 0.0,
        core_hours_used=usage.core_hours_used,
        core_hours_wasted=usage.core_hours_wasted,
        gpu_hours_allocated=usage.gpu_hours_allocated or 0.0,
        gpu_hours_used=usage.gpu_hours_used if usage.gpus else 0.0,
        cpu_efficiency=usage.cpu_efficiency,
        mem_efficiency=usage.mem_efficiency,
        time_efficiency=usage.time_efficiency,
        gpu_utilization=usage.gpu_utilization,
        completed=state == "COMPLETED",
        core_hours_recomputed=usage.core_hours_recomputed,
        runs=usage.runs,
    )


def totals_of(rows: Sequence[Row]) -> Totals:
    not_completed: Dict[str, int] = {}
    for r in rows:
        if not r.completed:
            not_completed[r.state] = not_completed.get(r.state, 0) + 1
    gpu_used = [r.gpu_hours_used for r in rows]
    return Totals(
        jobs=len(rows),
        completed=sum(1 for r in rows if r.completed),
        not_completed=not_completed,
        core_hours_allocated=sum(r.core_hours_allocated for r in rows),
        core_hours_used=sum(r.core_hours_used or 0.0 for r in rows),
        # a job without a CPU-time figure counts nothing as wasted: the report does not guess
        core_hours_wasted=sum(r.core_hours_wasted or 0.0 for r in rows),
        core_hours_lost=sum(r.core_hours_lost for r in rows),
        gpu_hours_allocated=sum(r.gpu_hours_allocated for r in rows),
        gpu_hours_used=None if any(u is None for u in gpu_used) else sum(u or 0.0 for u in gpu_used),
        core_hours_recomputed=sum(r.core_hours_recomputed or 0.0 for r in rows),
        interruptions=sum(max(0, r.runs - 1) for r in rows),
    )


def build(entries: Sequence[Mapping[str, Any]], advice: Optional[Mapping[str, Advice]] = None) -> Report:
    """The report of ``entries``: each ``{"usage": Usage, "site": str, "function": str}``."""
    rows = [row_of(e["usage"], e.get("site", ""), e.get("function", "")) for e in entries]
    return Report(rows, totals_of(rows), dict(advice or {}))


# -- text --------------------------------------------------------------------------------------------------------
def pct(value: Optional[float]) -> str:
    """``48%``; ``-`` when unknown."""
    return "-" if value is None else f"{value * 100:.0f}%"


def hours(value: Optional[float]) -> str:
    """``0.012``, ``1.25``, ``310``: hours with three significant figures; ``-`` when unknown."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


HEADERS = ("job", "function", "state", "core-h alloc", "used", "wasted", "GPU-h alloc", "used", "CPU", "mem",
           "time", "GPU")


def table_rows(report: Report) -> List[List[str]]:
    """The per-job rows of the text table, then the total row."""
    out = [
        [r.job_id, r.function, r.state, hours(r.core_hours_allocated), hours(r.core_hours_used),
         hours(r.core_hours_wasted), hours(r.gpu_hours_allocated), hours(r.gpu_hours_used), pct(r.cpu_efficiency),
         pct(r.mem_efficiency), pct(r.time_efficiency), pct(r.gpu_utilization)]
        for r in report.rows
    ]
    t = report.totals
    out.append([f"total ({t.jobs})", "", f"{t.completed} ok" + "".join(f", {n} {s}" for s, n in
                                                                       sorted(t.not_completed.items())),
                hours(t.core_hours_allocated), hours(t.core_hours_used), hours(t.core_hours_wasted),
                hours(t.gpu_hours_allocated), hours(t.gpu_hours_used), pct(t.cpu_efficiency), "", "", ""])
    return out


def summary_lines(report: Report) -> List[str]:
    """The lines under the table: what was lost in jobs that did not complete, then each function's advice."""
    t = report.totals
    lines = []
    if t.core_hours_allocated:
        lines.append(f"{hours(t.core_hours_wasted)} of {hours(t.core_hours_allocated)} core-hours allocated were "
                     f"idle ({pct(t.core_hours_wasted / t.core_hours_allocated)})"
                     + (f"; {hours(t.core_hours_lost)} core-hours went to jobs that did not complete"
                        if t.core_hours_lost else ""))
    if t.interruptions:
        unknown = sum(1 for r in report.rows if r.runs > 1 and r.core_hours_recomputed is None)
        lines.append(f"{hours(t.core_hours_recomputed)} core-hours were recomputed after {t.interruptions} "
                     f"interruption{'s' if t.interruptions != 1 else ''} (the work of each interrupted run after its "
                     "last checkpoint): busy, yet wasted"
                     + (f"; not measured for {unknown} job{'s' if unknown != 1 else ''}" if unknown else ""))
    for fn, advice in report.advice.items():
        lines.append(f"advice for {fn or 'these jobs'} ({advice.runs} run{'s' if advice.runs != 1 else ''}): "
                     f"{advice.summary()}")
        lines.extend(f"  {line}" for line in advice.lines)
    return lines
