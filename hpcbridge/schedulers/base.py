"""The scheduler adapter seam: pure functions from requests to argv, and from output to states."""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Mapping, Optional, Protocol, Sequence

from ..spec import Resources
from ..state import JobState


@dataclasses.dataclass(frozen=True)
class NativeStatus:
    """One job's (or array task's) state as the scheduler reported it."""

    job_id: str
    state: JobState
    native: str
    exit_code: Optional[int] = None
    reason: str = ""
    nodes: str = ""


@dataclasses.dataclass(frozen=True)
class ScriptRequest:
    """Everything an adapter needs to write a job's directives."""

    resources: Resources
    folder: str
    job_name: str
    tag: str
    ntasks_array: Optional[int]  # None: a plain job; N: an array of N tasks (0..N-1)
    workdir: Optional[str] = None
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)


class Scheduler(Protocol):
    """What the executor needs from a batch system. All methods are pure."""

    name: str
    template: str
    #: shell expression giving the array task index inside a job (0 for plain jobs)
    task_index_expr: str

    def directives(self, req: ScriptRequest) -> List[str]:
        """Option strings written as directives at the top of the batch script."""

    def submit_argv(self, script_path: str) -> List[str]:
        """Command that submits the script and prints the job id."""

    def parse_submit(self, stdout: str) -> str:
        """The job id from the submit command's output."""

    def task_id(self, job_id: str, index: int, is_array: bool) -> str:
        """The id under which the scheduler reports task ``index`` of a submission."""

    def status_argv(self, job_ids: Sequence[str], since_epoch: float) -> List[str]:
        """One command that reports every given job (submission ids, not task ids)."""

    def parse_status(self, stdout: str) -> Dict[str, NativeStatus]:
        """Task id -> status, for every line of the status command's output."""

    def cancel_argv(self, job_ids: Sequence[str]) -> List[str]:
        """Command that cancels jobs or array tasks."""


def expand_array_id(job_id: str) -> List[str]:
    """``123_[1-3,7%2]`` -> ``['123_1', '123_2', '123_3', '123_7']``; other ids are returned as they are."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    base, spec = m.groups()
    spec = spec.split("%", 1)[0]
    out: List[str] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            step = 1
            if ":" in hi:
                hi, step_text = hi.split(":", 1)
                step = int(step_text)
            out.extend(f"{base}_{i}" for i in range(int(lo), int(hi) + 1, step))
        elif part:
            out.append(f"{base}_{int(part)}")
    return out
