"""The runs of a requeued job (pure): the scheduler's records and the batch shell's notes into ``job.attempts``.

A job with requeue on (docs/requeue.md) keeps its id across runs; Slurm keeps one accounting record per run
(``sacct --duplicates``), and the batch shell writes a note when it requeues a run (``ckpt/<task>.run<N>``:
``REASON WARNED REQUEUED``, epochs), because Slurm records a requeue by ``scontrol`` as REQUEUED whether the job was
warned for its walltime or for a preemption.

The work each interruption wasted (:func:`recomputed`): the compute time of a run after its last
``checkpoint.save``, which the next run computes again (docs/requeue.md).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .state import Attempt

#: the native end of a run -> how it ended, as ``job.attempts`` says it
_ENDED = {"COMPLETED": "done", "REQUEUED": "REQUEUED", "PREEMPTED": "PREEMPTED", "NODE_FAIL": "NODE_FAIL",
          "TIMEOUT": "TIMEOUT"}


def parse_note(text: str) -> Tuple[str, Optional[float], Optional[float]]:
    """``(reason, warned_at, requeued_at)`` of a run's note; ``-`` or a bad number: None."""
    parts = (text.split() + ["", "", ""])[:3]

    def number(s: str) -> Optional[float]:
        try:
            return float(s)
        except ValueError:
            return None

    return parts[0], number(parts[1]), number(parts[2])


def note_run(text: str) -> Tuple[str, str, str]:
    """``(start, end, nodes)`` of a run as its note says (the batch shell's start and requeue, the node-local time
    as ``YYYY-MM-DDTHH:MM:SS``, and ``SLURM_JOB_NODELIST``); "" for each the note lacks (older notes have none)."""
    parts = [("" if p == "-" else p) for p in (text.split() + ["", "", "", "", "", ""])[3:6]]
    return parts[0], parts[1], parts[2]


def build(
    records: Sequence[Tuple[str, str, str, str]], notes: Dict[int, str], last: Optional[str] = None
) -> List[Attempt]:
    """One :class:`Attempt` per record ``(native state, nodes, start, end)``, oldest first; ``notes``: run number
    -> the note's text. A run requeued by the batch shell ended as its note says (TIMEOUT or PREEMPTED). ``last``:
    how the newest run ended when the job's result says so before the scheduler does (its record still RUNNING).
    A record without nodes, start or end (no accounting: the earlier runs are placeholders) takes them from the
    run's note."""
    out = []
    for i, (native, nodes, start, end) in enumerate(records):
        base = native.split(" ", 1)[0].rstrip("+")
        ended = _ENDED.get(base, base)
        warned = requeued = None
        if i in notes:
            reason, warned, requeued = parse_note(notes[i])
            if base in ("REQUEUED", "PREEMPTED", "TIMEOUT") and reason:
                ended = reason
            noted_start, noted_end, noted_nodes = note_run(notes[i])
            nodes = nodes if nodes not in ("", "None assigned") else noted_nodes
            start, end = start or noted_start, end or noted_end
        nodes = "" if nodes == "None assigned" else nodes
        if last is not None and i == len(records) - 1 and base in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING"):
            ended = last
        out.append(Attempt(nodes, start, end, ended, native, warned, requeued))
    return out


def describe(attempts: Sequence[Attempt]) -> str:
    """``run 1: node1 2026-12-06T12:45:06 - 2026-12-06T12:45:13 PREEMPTED; run 2: ...`` for an error message."""
    return "; ".join(f"run {i}: {a.describe()}" for i, a in enumerate(attempts, 1))


def saves(marker: Optional[bytes]) -> Dict[int, Tuple[Optional[float], Optional[float]]]:
    """The checkpoint marker's (``ckpt/<task>.saved``) last save of each run: run -> ``(saved epoch, seconds
    since the run's start)``; {} when there is none or it cannot be read."""
    if not marker:
        return {}
    try:
        data = json.loads(marker.decode("utf-8", "replace"))
    except ValueError:
        return {}
    runs = data.get("runs") if isinstance(data, dict) else None
    out: Dict[int, Tuple[Optional[float], Optional[float]]] = {}
    for run, entry in (runs.items() if isinstance(runs, dict) else ()):
        if str(run).isdigit() and isinstance(entry, dict):
            out[int(run)] = (_number(entry.get("saved")), _number(entry.get("since_start")))
    return out


def _number(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def recomputed(runs: Sequence[Attempt], costs: Sequence[Tuple[Optional[float], Optional[int]]],
               saved: Mapping[int, Tuple[Optional[float], Optional[float]]]) -> List[Attempt]:
    """``runs`` with ``recomputed_s``: the core-seconds of each run after its last checkpoint, which the next run
    computes again; ``costs``: each run's ``(elapsed seconds, allocated CPUs)`` (the scheduler's records, in the
    order of ``runs``); ``saved``: :func:`saves`.

    A run followed by another: CPUs x (its end - its last save). Its end is the batch shell's requeue
    (``requeued_at``, the same clock as the save) when the shell requeued it, else the scheduler's elapsed time
    after the save's offset from the run's start (a node failure, a preemption the call did not leave in time). A
    run that saved nothing recomputed all of itself (the next run starts from the checkpoint before it, or from
    scratch): CPUs x its elapsed time. The last run is recomputed by nothing: 0. Unknown figures: None.
    """
    out = []
    for i, run in enumerate(runs):
        elapsed, cpus = costs[i] if i < len(costs) else (None, None)
        value: Optional[float] = None
        if i == len(runs) - 1:
            value = 0.0
        elif cpus:
            wall: Optional[float] = elapsed
            if i in saved:
                at, since_start = saved[i]
                if run.requeued_at is not None and at is not None:
                    wall = run.requeued_at - at
                elif elapsed is not None and since_start is not None:
                    wall = elapsed - since_start
                else:
                    wall = None
            value = None if wall is None else cpus * max(0.0, wall)
        out.append(dataclasses.replace(run, recomputed_s=value))
    return out
