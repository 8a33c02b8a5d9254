"""Adapter for the built-in ``local`` site: a tiny batch system run by :mod:`hpcbridge.schedulers.local_runner`."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from ..errors import SchedulerError
from ..state import JobState
from .base import (
    ClusterFacts,
    NativeStatus,
    Output,
    Scheduler,
    ScriptRequest,
    SiteConfig,
    StatusAnswer,
    StatusQuery,
    Verdict,
)

_STATES = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
}
RUNNER = "hpcbridge.schedulers.local_runner"


class LocalScheduler(Scheduler):
    """Runs each task as a local process; at most ``parallel`` at once (0: as many as this machine has CPUs)."""

    name = "local"
    template = "local.sh.j2"
    task_index_expr = "${HPCBRIDGE_TASK:-0}"
    one_machine = True

    def __init__(self, python: str, root: str, parallel: int = 0) -> None:
        self.python = python
        self.root = root
        self.parallel = parallel

    @classmethod
    def from_site(cls, site: SiteConfig, root: str) -> LocalScheduler:
        return cls(site.python, root, site.local_parallel)

    def directives(self, req: ScriptRequest) -> List[str]:
        out = [f"--array-size={req.array_size or 1}", f"--array={1 if req.array_size is not None else 0}"]
        parallel = req.resources.array_parallelism or self.parallel
        if parallel:  # else the runner starts as many at once as its machine has CPUs
            out.append(f"--parallel={parallel}")
        if req.workdir:
            out.append(f"--chdir={req.workdir}")
        return out

    def submit_argv(self, script_path: str) -> List[str]:
        return [self.python, "-m", RUNNER, "submit", script_path]

    def parse_submit(self, stdout: str) -> str:
        lines = stdout.strip().splitlines()
        if not lines:
            raise SchedulerError("the local runner printed no job id")
        return lines[-1].strip()

    def status_query(
        self,
        job_ids: Sequence[str],
        since_epoch: float,
        now_epoch: float,
        facts: ClusterFacts,
        arrays: Optional[Mapping[str, int]] = None,
    ) -> StatusQuery:
        argv = [self.python, "-m", RUNNER, "status", "--root", self.root, *job_ids]
        return StatusQuery(argv, tuple(job_ids), facts, dict(arrays or {}))

    def parse_status(self, query: StatusQuery, out: Output) -> StatusAnswer:
        if out.returncode != 0:
            return StatusAnswer(Verdict.RETRY)
        statuses: Dict[str, NativeStatus] = {}
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3:
                continue
            task, native, code = parts
            statuses[task] = NativeStatus(
                task, _STATES.get(native, JobState.UNKNOWN), native, int(code) if code.isdigit() else None
            )
        return StatusAnswer(Verdict.ANSWERED, statuses)

    def cancel_argv(self, job_ids: Sequence[str]) -> List[str]:
        return [self.python, "-m", RUNNER, "cancel", "--root", self.root, *job_ids]
