"""The runs of a requeued job (pure): the scheduler's records and the batch shell's notes into ``job.attempts``.

A job with requeue on (docs/requeue.md) keeps its id across runs; Slurm keeps one accounting record per run
(``sacct --duplicates``), and the batch shell writes a note when it requeues a run (``ckpt/<task>.run<N>``:
``REASON WARNED REQUEUED``, epochs), because Slurm records a requeue by ``scontrol`` as REQUEUED whether the job was
warned for its walltime or for a preemption.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

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


def build(
    records: Sequence[Tuple[str, str, str, str]], notes: Dict[int, str], last: Optional[str] = None
) -> List[Attempt]:
    """One :class:`Attempt` per record ``(native state, nodes, start, end)``, oldest first; ``notes``: run number
    -> the note's text. A run requeued by the batch shell ended as its note says (TIMEOUT or PREEMPTED). ``last``:
    how the newest run ended when the job's result says so before the scheduler does (its record still RUNNING)."""
    out = []
    for i, (native, nodes, start, end) in enumerate(records):
        base = native.split(" ", 1)[0].rstrip("+")
        ended = _ENDED.get(base, base)
        warned = requeued = None
        if i in notes:
            reason, warned, requeued = parse_note(notes[i])
            if base in ("REQUEUED", "PREEMPTED", "TIMEOUT") and reason:
                ended = reason
        nodes = "" if nodes == "None assigned" else nodes
        if last is not None and i == len(records) - 1 and base in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING"):
            ended = last
        out.append(Attempt(nodes, start, end, ended, native, warned, requeued))
    return out


def describe(attempts: Sequence[Attempt]) -> str:
    """``run 1: node1 2026-12-06T12:45:06 - 2026-12-06T12:45:13 PREEMPTED; run 2: ...`` for an error message."""
    return "; ".join(f"run {i}: {a.describe()}" for i, a in enumerate(attempts, 1))
