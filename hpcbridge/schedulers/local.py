"""Adapter for the built-in ``local`` site: a tiny batch system run by hpcbridge._localsched."""

from __future__ import annotations

from typing import Dict, List, Sequence

from ..errors import SchedulerError
from ..state import JobState
from .base import NativeStatus, Scheduler, ScriptRequest

_STATES = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
}


class LocalScheduler(Scheduler):
    """Runs each task as a local process; at most ``parallel`` at once."""

    name = "local"
    template = "local.sh.j2"
    task_index_expr = "${HPCBRIDGE_TASK:-0}"

    def __init__(self, python: str, root: str, parallel: int) -> None:
        self.python = python
        self.root = root
        self.parallel = parallel

    def directives(self, req: ScriptRequest) -> List[str]:
        out = [
            f"--ntasks={req.ntasks_array or 1}",
            f"--array={1 if req.ntasks_array is not None else 0}",
            f"--parallel={req.resources.array_parallelism or self.parallel}",
        ]
        if req.workdir:
            out.append(f"--chdir={req.workdir}")
        return out

    def submit_argv(self, script_path: str) -> List[str]:
        return [self.python, "-m", "hpcbridge._localsched", "submit", script_path]

    def parse_submit(self, stdout: str) -> str:
        lines = stdout.strip().splitlines()
        if not lines:
            raise SchedulerError("the local runner printed no job id")
        return lines[-1].strip()

    def task_id(self, job_id: str, index: int, is_array: bool) -> str:
        return f"{job_id}_{index}" if is_array else job_id

    def status_argv(self, job_ids: Sequence[str], since_epoch: float) -> List[str]:
        return [self.python, "-m", "hpcbridge._localsched", "status", "--root", self.root, *job_ids]

    def parse_status(self, stdout: str) -> Dict[str, NativeStatus]:
        out: Dict[str, NativeStatus] = {}
        for line in stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3:
                continue
            task, native, code = parts
            out[task] = NativeStatus(
                task, _STATES.get(native, JobState.UNKNOWN), native, int(code) if code.isdigit() else None
            )
        return out

    def cancel_argv(self, job_ids: Sequence[str]) -> List[str]:
        return [self.python, "-m", "hpcbridge._localsched", "cancel", "--root", self.root, *job_ids]
