"""Job states shared by every scheduler; native state tables live with each adapter."""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional


class JobState(str, enum.Enum):
    """Normalised job state. ``is_final`` says whether the job can still change."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN)

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One run of a job that requeue may restart (docs/requeue.md): ``job.attempts`` holds one per run.

    ``ended``: how the run ended, ``TIMEOUT``, ``PREEMPTED``, ``NODE_FAIL``, ``done`` (it completed), another final
    state (``FAILED`` ...) or ``RUNNING``/``PENDING`` for the run still under way. ``start``/``end``: as the
    scheduler prints them (``2026-12-06T12:45:06``, ``Unknown``). ``warned_at``/``requeued_at``: epoch seconds of the
    warning and of hpcbridge's requeue, from the batch shell's note (None when the scheduler restarted the run
    itself, e.g. after a node failure). ``recomputed_s``: the compute time of this run after its last checkpoint,
    which the interruption wasted: core-seconds, CPUs x (run end - last save), the whole run when it saved nothing,
    0 for the last run (None: not known; :func:`hpcbridge.attempts.recomputed`).
    """

    nodes: str
    start: str
    end: str
    ended: str
    native: str = ""
    warned_at: Optional[float] = None
    requeued_at: Optional[float] = None
    recomputed_s: Optional[float] = None

    def describe(self) -> str:
        return f"{self.nodes or '-'} {self.start} - {self.end} {self.ended}"
