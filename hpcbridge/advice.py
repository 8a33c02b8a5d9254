"""What the next run should ask for, from what earlier runs used: the arithmetic behind ``hpcbridge.suggest`` and
``Executor(right_size=True)`` (pure: usage figures in, resource keywords and the reasoning out).

The rules (docs/usage-advice.md):

- memory: the largest peak of any node (the ranks on one node added up) x 1.5, rounded up to a step (0.5 GB up to
  4 GB, 1 GB up to 32 GB, 4 GB beyond); a run that ran out of memory: twice what it had;
- walltime: the longest run x 1.5, rounded up to 5 minutes (15 minutes past 1 hour, 1 hour past 4 hours); a run
  that timed out: twice its walltime;
- CPUs per task: the busiest task's average busy CPUs (CPU time / elapsed), rounded up after a 0.1 tolerance
  (1.02 busy CPUs is one CPU plus the sampler and the interpreter's start);
- GPUs per node: the busy GPUs (utilisation x GPUs) rounded up the same way, at least 1; a note says how idle they
  were.

A request is only ever lowered by the rules above when the new value is smaller, and never below what a run used
(its peak memory, its elapsed time, its busy CPUs rounded down); it is raised only after an out-of-memory or
timeout end. Runs that say nothing about a resource (no peak, no CPU time) leave it as it is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .usage import Usage

MEM_FACTOR = 1.5
TIME_FACTOR = 1.5
#: busy CPUs (or GPUs) up to this much over a whole number are counted as noise
BUSY_TOLERANCE = 0.1
#: a GPU less busy than this gets a note
GPU_IDLE_NOTE = 0.5


@dataclasses.dataclass(frozen=True)
class Asked:
    """What a run asked for, in the units of ``Executor`` keywords (``mem_gb`` per node)."""

    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    walltime_s: Optional[int] = None
    gpus_per_node: Optional[int] = None
    tasks: int = 1
    nodes: int = 1


@dataclasses.dataclass(frozen=True)
class Change:
    """One resource keyword to change: ``name`` (``mem_gb``, ``walltime``, ``cpus_per_task``, ``gpus_per_node``),
    the value asked and the value advised (``walltime`` as ``H:MM:SS``), and the arithmetic in one line."""

    name: str
    old: Any
    new: Any
    why: str


@dataclasses.dataclass(frozen=True)
class Advice:
    """What the next run should ask for: the changes (empty: keep the request), notes, and how many runs it read."""

    function: str
    runs: int
    changes: Tuple[Change, ...] = ()
    notes: Tuple[str, ...] = ()

    def resources(self) -> Dict[str, Any]:
        """The changes as ``Executor``/``with_resources`` keywords, e.g. ``{'mem_gb': 0.5, 'walltime': '0:05:00'}``."""
        return {c.name: c.new for c in self.changes}

    @property
    def lines(self) -> List[str]:
        """The arithmetic, one line per change, then the notes."""
        return [c.why for c in self.changes] + list(self.notes)

    def summary(self) -> str:
        """One line: ``mem_gb=0.5, walltime=0:05:00`` (or ``keep the request``)."""
        return ", ".join(f"{c.name}={c.new}" for c in self.changes) or "keep the request"

    def __str__(self) -> str:
        head = f"{self.function or 'these jobs'} ({self.runs} run{'s' if self.runs != 1 else ''}): {self.summary()}"
        return "\n".join([head] + [f"  {line}" for line in self.lines])

    def __repr__(self) -> str:  # the text a notebook or a REPL shows: the arithmetic, not the fields
        return str(self)

    def _repr_html_(self) -> str:
        import html

        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.lines)
        return (f'<div class="hpcbridge-advice"><b>{html.escape(self.function or "these jobs")}</b> '
                f"({self.runs} run{'s' if self.runs != 1 else ''}): <code>{html.escape(self.summary())}</code>"
                f"<ul>{items}</ul></div>")


# -- formatting ----------------------------------------------------------------------------------------------
def hms(seconds: float) -> str:
    """``2:10`` under an hour, ``1:00:00`` from an hour (the way the advice prints used time)."""
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def walltime_text(seconds: int) -> str:
    """A walltime as the ``walltime=`` keyword takes it: ``H:MM:SS`` (``0:05:00``)."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def gb(value: float) -> str:
    """``0.21``, ``4``, ``12.5``: a GB figure without trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if value < 10 else f"{value:.1f}".rstrip("0").rstrip(".")


def mem_step(value_gb: float) -> float:
    return 0.5 if value_gb <= 4 else 1.0 if value_gb <= 32 else 4.0


def round_mem(value_gb: float) -> float:
    """Up to the next step: 0.315 -> 0.5, 5.2 -> 6, 40.1 -> 44."""
    step = mem_step(value_gb)
    return max(step, math.ceil(value_gb / step - 1e-9) * step)


def time_step(seconds: float) -> int:
    return 300 if seconds <= 3600 else 900 if seconds <= 4 * 3600 else 3600


def round_time(seconds: float) -> int:
    """Up to the next step: 195 s -> 300 s, 4000 s -> 4500 s."""
    step = time_step(seconds)
    return max(step, int(math.ceil(seconds / step - 1e-9)) * step)


def whole(busy: float) -> int:
    """Busy CPUs or GPUs as a whole number: rounded up after the tolerance, at least 1 (1.02 -> 1, 1.3 -> 2)."""
    return max(1, int(math.ceil(busy - BUSY_TOLERANCE)))


# -- reading runs --------------------------------------------------------------------------------------------
def state_name(usage: Usage) -> str:
    """The run's end as text (``COMPLETED``, ``TIMEOUT``, ...), whatever type ``state`` holds."""
    return usage.state


def node_peak_gb(usage: Usage) -> Optional[float]:
    """The largest memory peak of one node: the ranks on a node added up, and the job's own figure."""
    per_node: Dict[str, float] = {}
    for rank in usage.ranks:
        if rank.peak_rss_gb is not None:
            per_node[rank.node] = per_node.get(rank.node, 0.0) + rank.peak_rss_gb
    peaks = list(per_node.values()) + ([usage.peak_mem_gb] if usage.peak_mem_gb is not None else [])
    return max(peaks) if peaks else None


def busy_cpus_per_task(usage: Usage, tasks: int) -> Optional[float]:
    """The busiest task's CPU time / elapsed (from its rank's figure, else the job's spread over its tasks)."""
    if not usage.elapsed_s:
        return None
    ranks = [r.cpu_time_s for r in usage.ranks if r.cpu_time_s is not None]
    if ranks:
        return float(max(ranks)) / usage.elapsed_s
    if usage.cpu_time_s is None:
        return None
    return usage.cpu_time_s / usage.elapsed_s / max(1, tasks)


def asked_of(usage: Usage) -> Asked:
    """What a run asked for, read from its usage's allocation (when nothing better is known)."""
    tasks = max(1, len(usage.ranks))
    nodes = max(1, usage.nodes or 1)
    return Asked(
        cpus_per_task=None if not usage.cpus else max(1, usage.cpus // tasks),
        mem_gb=None if usage.mem_gb is None else usage.mem_gb / nodes,
        walltime_s=None if usage.walltime_s is None else int(usage.walltime_s),
        gpus_per_node=None if usage.gpus is None else usage.gpus // nodes,
        tasks=tasks,
        nodes=nodes,
    )


# -- the advice ----------------------------------------------------------------------------------------------
def advise(runs: Iterable[Usage], asked: Optional[Asked] = None, function: str = "") -> Advice:
    """The advice for the next run of the job(s) ``runs`` describe.

    ``asked``: the request to change (an executor's); by default the latest run's allocation.
    """
    runs = [u for u in runs if u.elapsed_s is not None]  # a job that never started says nothing
    if not runs:
        return Advice(function, 0, notes=("no finished run with usage figures yet: nothing to go by",))
    asked = asked or asked_of(runs[-1])
    changes: List[Change] = []
    notes: List[str] = []
    for step in (_memory, _walltime, _cpus, _gpus):
        change, note = step(runs, asked)
        if change is not None:
            changes.append(change)
        if note:
            notes.append(note)
    return Advice(function, len(runs), tuple(changes), tuple(notes))


def _of(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _memory(runs: Sequence[Usage], asked: Asked) -> Tuple[Optional[Change], str]:
    if asked.mem_gb is None:
        return None, ""
    oom = [u for u in runs if state_name(u) == "OUT_OF_MEMORY"]
    if oom:
        new = round_mem(asked.mem_gb * 2)
        return Change("mem_gb", asked.mem_gb, new, f"ran out of memory with {gb(asked.mem_gb)} GB -> mem_gb={gb(new)} "
                      "(twice as much)"), ""
    peaks = [p for p in (node_peak_gb(u) for u in runs) if p is not None]
    if not peaks:
        return None, "no memory figures: mem_gb kept"
    peak = max(peaks)
    new = round_mem(peak * MEM_FACTOR)
    if new >= asked.mem_gb:
        return None, ""
    return Change("mem_gb", asked.mem_gb, new, f"peak {gb(peak)} GB of {gb(asked.mem_gb)} GB asked -> "
                  f"mem_gb={gb(new)} (peak x {MEM_FACTOR:g}, rounded up)"), ""


def _walltime(runs: Sequence[Usage], asked: Asked) -> Tuple[Optional[Change], str]:
    if asked.walltime_s is None:
        return None, ""
    if any(state_name(u) == "TIMEOUT" for u in runs):
        new = round_time(asked.walltime_s * 2)
        return Change("walltime", walltime_text(asked.walltime_s), walltime_text(new),
                      f"timed out at {walltime_text(asked.walltime_s)} -> walltime {walltime_text(new)} "
                      "(twice as long)"), ""
    used = max(float(u.elapsed_s or 0) for u in runs)
    new = round_time(used * TIME_FACTOR)
    if new >= asked.walltime_s:
        return None, ""
    return Change("walltime", walltime_text(asked.walltime_s), walltime_text(new),
                  f"used {hms(used)} of {walltime_text(asked.walltime_s)} -> walltime {walltime_text(new)} "
                  f"(longest run x {TIME_FACTOR:g}, rounded up)"), ""


def _cpus(runs: Sequence[Usage], asked: Asked) -> Tuple[Optional[Change], str]:
    if asked.cpus_per_task is None:
        return None, ""
    busy = [b for b in (busy_cpus_per_task(u, asked.tasks) for u in runs) if b is not None]
    if not busy:
        return None, "no CPU time figures: cpus_per_task kept"
    most = max(busy)
    new = whole(most)
    if new >= asked.cpus_per_task:
        return None, ""
    return Change("cpus_per_task", asked.cpus_per_task, new,
                  f"{most:.2f} of {_of(asked.cpus_per_task, 'CPU')} busy -> cpus_per_task={new}"), ""


def _gpus(runs: Sequence[Usage], asked: Asked) -> Tuple[Optional[Change], str]:
    gpus = asked.gpus_per_node or 0
    if not gpus:
        return None, ""
    utils = [u.gpu_utilization for u in runs if u.gpu_utilization is not None]
    if not utils:
        return None, "no GPU data: gpus_per_node kept"
    util = max(utils)
    note = f"GPU idle {round((1 - util) * 100)} % of the time" if util < GPU_IDLE_NOTE else ""
    mem = [u.gpu_mem_peak_gb for u in runs if u.gpu_mem_peak_gb is not None]
    if mem:
        note = "; ".join(x for x in (note, f"GPU memory peak {gb(max(mem))} GB") if x)
    new = whole(util * gpus)
    if new >= gpus:
        return None, note
    return Change("gpus_per_node", gpus, new,
                  f"{util * gpus:.2f} of {_of(gpus, 'GPU')} busy -> gpus_per_node={new}"), note
