"""Adapter for the built-in ``local`` site: a tiny batch system run by :mod:`hpcbridge.schedulers.local_runner`.

What the local site does with each resource (docs/site-configs.md, "The local site"), decided so that a job moved
from a cluster site for a quick run here either gets what it asked for or an error saying why:

- ``walltime``: enforced. A task still running at its walltime is stopped as Slurm stops it (SIGTERM to its whole
  process group, SIGKILL 3 s later) and ends TIMEOUT: ``job.result()`` raises ``JobTimeoutError``.
- ``mem_gb``: enforced as Slurm enforces it without cgroups (``OverMemoryKill``): the resident memory of the task's
  processes is sampled twice a second, and a task over its limit is killed (SIGKILL) and ends OUT_OF_MEMORY
  (``JobOutOfMemoryError``). Linux only (it reads /proc); elsewhere the runner refuses the job at submission.
- ``cpus_per_task`` (times ``tasks_per_node``): the task runs with an affinity mask of that many CPUs, those no
  other running local task of this user holds where there are enough; ``hpcbridge.environment().cpus_per_task``
  says cpus_per_task. More CPUs than this machine has is refused at submission. Linux only (elsewhere no mask).
- ``name``: the job's name, shown where the runner lists jobs (its ``status`` lines, and ``ps``: the runner's
  command line carries it).
- ``nodes`` above 1, ``partition``, ``account``, ``qos``, ``gpus_per_node`` and ``extra_directives`` are refused
  (:attr:`LocalScheduler.why_not`): this machine has none of them to give. ``after=`` is refused as everywhere
  without dependencies.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence

from ..errors import SchedulerError
from ..spec import RESOURCE_NAMES
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
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}
RUNNER = "hpcbridge.schedulers.local_runner"
#: the remedy every refusal ends with
_DROP = "drop it (the keyword, or the site-config's [defaults]) for a run on this machine, or use a cluster site"


class LocalScheduler(Scheduler):
    """Runs each task as a local process; at most ``parallel`` at once (0: as many as this machine has CPUs)."""

    name = "local"
    template = "local.sh.j2"
    task_index_expr = "${HPCBRIDGE_TASK:-0}"
    one_machine = True
    supported_resources: FrozenSet[str] = frozenset(RESOURCE_NAMES) - {
        "partition", "account", "qos", "gpus_per_node", "extra_directives", "requeue"
    }
    why_not: Mapping[str, str] = {
        "partition": f"the local site has no partitions; {_DROP}",
        "account": f"the local site has no accounts to charge; {_DROP}",
        "qos": f"the local site has no QOS; {_DROP}",
        "gpus_per_node": f"the local site hands out no GPUs (a job sees this machine's GPUs as they are); {_DROP}",
        "extra_directives": f"the local site has no scheduler to read directives; {_DROP}",
        "requeue": "the local site cannot requeue a job (it has no walltime warning, preemption or requeue); use "
        "requeue=0 here, or a Slurm site (docs/requeue.md)",
    }

    def __init__(self, python: str, root: str, parallel: int = 0) -> None:
        self.python = python
        self.root = root
        self.parallel = parallel

    @classmethod
    def from_site(cls, site: SiteConfig, root: str) -> LocalScheduler:
        return cls(site.python, root, site.local_parallel)

    def directives(self, req: ScriptRequest) -> List[str]:
        res = req.resources
        out = [f"--array-size={req.array_size or 1}", f"--array={1 if req.array_size is not None else 0}"]
        parallel = res.array_parallelism or self.parallel
        if parallel:  # else the runner starts as many at once as its machine's CPUs hold
            out.append(f"--parallel={parallel}")
        if req.workdir:
            out.append(f"--chdir={req.workdir}")
        out += [f"--job-name={req.job_name}", f"--cpus-per-task={res.cpus_per_task}"]
        if res.tasks_per_node > 1:
            out.append(f"--tasks-per-node={res.tasks_per_node}")
        if res.walltime_s is not None:
            out.append(f"--walltime-s={res.walltime_s}")
        if res.mem_mb is not None:
            out.append(f"--mem-mb={res.mem_mb}")
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
            parts = line.strip().split("|")  # id|STATE|exit code|job name
            if len(parts) < 3:
                continue
            task, native, code = parts[:3]
            statuses[task] = NativeStatus(
                task, _STATES.get(native, JobState.UNKNOWN), native, int(code) if code.isdigit() else None
            )
        return StatusAnswer(Verdict.ANSWERED, statuses)

    def cancel_argv(self, job_ids: Sequence[str]) -> List[str]:
        return [self.python, "-m", RUNNER, "cancel", "--root", self.root, *job_ids]
