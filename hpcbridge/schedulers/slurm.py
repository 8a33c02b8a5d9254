"""Slurm adapter: sbatch / sacct / squeue / scontrol / scancel argv and their parsers (pure)."""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ResourceError, SchedulerError
from ..state import JobState
from ..store import JobFolder
from ..usage import Measured
from . import slurm_usage
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
    expand_array_id,
)

#: Slurm's base state names (as sacct/squeue print them) -> normalised state.
STATES: Dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "CONFIGURING": JobState.RUNNING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "REVOKED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "PREEMPTED": JobState.PREEMPTED,
    "NODE_FAIL": JobState.NODE_FAIL,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}

SACCT_FIELDS = "JobID,State,ExitCode,NodeList"
#: the native state of a job that scontrol no longer knows (accounting off, ended more than MinJobAge ago)
GONE_FROM_SLURMCTLD = "gone from slurmctld (it ended; without accounting its exit status is no longer kept)"
#: slurmstepd's line in the job's stderr when the accounting poll (JobAcctGatherParams=OverMemoryKill, memory
#: enforcement without cgroups) kills it: the job then ends FAILED (the step CANCELLED), not OUT_OF_MEMORY
MEMORY_KILL = re.compile(r"exceeded memory limit \(\d+ > \d+\), being killed")
#: id, state, reason, nodes, and the start time (a pending job's estimate, as ``squeue --start`` shows it)
SQUEUE_FORMAT = "%i|%T|%r|%N|%S"


def normalise(native: str) -> JobState:
    """``'CANCELLED by 2001'`` -> CANCELLED; unknown names -> UNKNOWN."""
    base = native.strip().split(" ", 1)[0].rstrip("+")
    return STATES.get(base, JobState.UNKNOWN)


def _exit_code(text: str) -> Optional[int]:
    code = text.strip().split(":", 1)[0]
    return int(code) if code.isdigit() else None


def walltime_arg(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"


def slurm_duration(text: str) -> Optional[int]:
    """Seconds in Slurm's way of printing a duration (``squeue %L``): ``SS``, ``MM:SS``, ``HH:MM:SS``,
    ``D-HH[:MM[:SS]]``; None for ``UNLIMITED``, ``NOT_SET``, ``INVALID`` or anything else."""
    text = text.strip()
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        if not day_text.isdigit():
            return None
        days = int(day_text)
        parts = text.split(":")
        parts += ["0"] * (3 - len(parts))  # D-HH and D-HH:MM
    else:
        parts = text.split(":")
        parts = ["0"] * (3 - len(parts)) + parts
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    h, m, s = (int(p) for p in parts)
    return days * 86400 + h * 3600 + m * 60 + s


def _squeue_argv(job_ids: Sequence[str]) -> List[str]:
    """squeue for the given jobs, array tasks one per line, recently ended ones included (``--states=all``)."""
    ids = ",".join(job_ids)
    return ["squeue", "--noheader", "--array", "--states=all", f"--format={SQUEUE_FORMAT}", f"--jobs={ids}"]


def dependency_directives(after: Sequence[str]) -> List[str]:
    """``after=``: start only once every job (``123``: all of an array; ``123_4``: one task) completed successfully;
    cancel the job when that can no longer happen, instead of leaving it pending forever (DependencyNeverSatisfied).
    """
    for job_id in after:
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise ResourceError(f"after: {job_id!r} is not a Slurm job id (123, or 123_4 for an array task)")
    return [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]


class SlurmScheduler(Scheduler):
    """Slurm through its command-line tools."""

    name = "slurm"
    template = "slurm.sh.j2"
    #: messages of a command that never reached slurmctld: safe to run again (unlike "Socket timed out on
    #: send/recv", after which the job may exist)
    not_sent_errors = ("Unable to contact slurm controller (connect failure)",)
    task_index_expr = "${SLURM_ARRAY_TASK_ID:-0}"
    supports_after = True
    launchers = ("srun", "mpirun", "torchrun")
    per_node_launcher = "srun"
    #: an enclosing job's (JupyterHub-on-HPC notebooks run inside one): srun/sbatch read SLURM_* as input
    scrub_prefixes = ("SLURM_", "SRUN_", "SALLOC_")
    safe_commands = frozenset({"sacct", "squeue", "sinfo", "sshare", "sprio", "sstat", "sdiag", "scontrol show"})
    #: requeue on (docs/requeue.md): the batch shell's trap, forwarding and ``scontrol requeue``
    requeue_template = "partials/requeue_slurm.sh.j2"

    def __init__(self, accounting: bool = True, gpu_directive: str = "gpus-per-node") -> None:
        #: what the site-config says; what the cluster says is in the backend's ClusterFacts
        self.accounting = accounting
        self.gpu_directive = gpu_directive

    @classmethod
    def from_site(cls, site: SiteConfig, root: str) -> SlurmScheduler:
        return cls(accounting=site.accounting, gpu_directive=str(site.slurm.get("gpu_directive", "gpus-per-node")))

    def initial_facts(self) -> ClusterFacts:
        return ClusterFacts(accounting=self.accounting)

    # -- submission ---------------------------------------------------------------------------------------
    def directives(self, req: ScriptRequest) -> List[str]:
        r = req.resources
        log = JobFolder(req.folder).log_pattern("%a" if req.array_size is not None else "0")
        out = [
            f"--job-name={req.job_name}",
            f"--output={log}.out",
            f"--error={log}.err",
            f"--comment=hpcbridge:{req.tag}",
            f"--nodes={r.nodes}",
            f"--ntasks-per-node={r.tasks_per_node}",
            f"--cpus-per-task={r.cpus_per_task}",
        ]
        if r.mem_mb is not None:
            out.append(f"--mem={r.mem_mb}M")
        if r.walltime_s is not None:
            out.append(f"--time={walltime_arg(r.walltime_s)}")
        if r.gpus_per_node:
            if self.gpu_directive == "gres":
                out.append(f"--gres=gpu:{r.gpus_per_node}")
            else:
                out.append(f"--gpus-per-node={r.gpus_per_node}")
        for key in ("partition", "account", "qos"):
            value = getattr(r, key)
            if value:
                out.append(f"--{key}={value}")
        if req.array_size is not None:
            arr = f"--array=0-{req.array_size - 1}"
            if r.array_parallelism:
                arr += f"%{r.array_parallelism}"
            out.append(arr)
        if req.workdir:
            out.append(f"--chdir={req.workdir}")
        if r.after:
            out += dependency_directives(r.after)
        if r.requeue:  # docs/requeue.md: requeueable (node failure), warned in the batch shell, logs of every run kept
            out += ["--requeue", f"--signal=B:USR2@{r.grace_s}", "--open-mode=append"]
        out.extend(r.extra_directives)
        return out

    def submit_argv(self, script_path: str) -> List[str]:
        return ["sbatch", "--parsable", script_path]

    def parse_submit(self, stdout: str) -> str:
        for line in reversed(stdout.strip().splitlines()):
            job_id = line.strip().split(";", 1)[0]
            if job_id.isdigit():
                return job_id
        raise SchedulerError(f"sbatch printed no job id: {stdout.strip()!r}")

    def find_by_tag_argv(self, tag: str) -> List[str]:
        """The user's jobs with their comments (``--comment=hpcbridge:TAG``), recent finished ones included.

        Used after a connection dropped while ``sbatch`` ran, to find the job instead of submitting it twice.
        """
        return ["squeue", "--me", "--noheader", "--states=all", "--format=%i|%k"]

    def find_by_tag_hint(self, tag: str) -> str:
        return f"carries the comment hpcbridge:{tag}: see `squeue --me --format=%i|%k`"

    def parse_find_by_tag(self, stdout: str, tag: str) -> Optional[str]:
        """The job id carrying ``hpcbridge:TAG`` (the array's id for array tasks), or None."""
        want = f"hpcbridge:{tag}"
        for line in stdout.splitlines():
            job_id, sep, comment = line.strip().partition("|")
            if sep and comment.strip() == want:
                base = job_id.split("_", 1)[0]
                if base.isdigit():
                    return base
        return None

    # -- status -------------------------------------------------------------------------------------------
    def status_query(
        self,
        job_ids: Sequence[str],
        since_epoch: float,
        now_epoch: float,
        facts: ClusterFacts,
        arrays: Optional[Mapping[str, int]] = None,
    ) -> StatusQuery:
        """sacct, or squeue (plus scontrol show job per unlisted task) on a cluster without accounting."""
        if facts.accounting:
            # the window starts shortly before the oldest submission: sacct without -S scans from the epoch, and
            # a wide window can return an older job that had the same id (ids restart when a cluster's state
            # is reset). Relative ("now-N", seconds), so the client's and the cluster's time zones never
            # matter; 10 minutes allow for clock skew.
            since = f"now-{max(0, int(now_epoch - since_epoch)) + 600}"
            argv = [
                "sacct",
                "--noheader",
                "--parsable2",
                "--allocations",
                f"--format={SACCT_FIELDS}",
                f"--starttime={since}",
                f"--jobs={','.join(job_ids)}",
            ]
        else:
            argv = _squeue_argv(job_ids)
        return StatusQuery(argv, tuple(job_ids), facts, dict(arrays or {}))

    def waiting_status_query(
        self, job_ids: Sequence[str], facts: ClusterFacts, arrays: Optional[Mapping[str, int]] = None
    ) -> Optional[StatusQuery]:
        """squeue while every job waits, also where sacct is the status command: sacct has no estimated start (it
        prints "Unknown" for a pending job), squeue gives it with the reason. It lists a job that ended until
        slurmctld forgets it (MinJobAge); a job it does not list is asked of sacct next time (the poller)."""
        if not facts.accounting:
            return None  # status_query is squeue already
        return StatusQuery(_squeue_argv(job_ids), tuple(job_ids), facts, dict(arrays or {}))

    def parse_status(self, query: StatusQuery, out: Output) -> StatusAnswer:
        accounting = query.argv[0] == "sacct"
        if out.returncode != 0:
            return self._failed(query, out.stderr)
        statuses: Dict[str, NativeStatus] = {}
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 2 or not parts[0]:
                continue
            start = ""
            if accounting:
                job_id, native, code, nodes = (parts + ["", "", ""])[:4]
                exit_code, reason = _exit_code(code), ""
            else:
                job_id, native, reason, nodes, start = (parts + ["", "", "", ""])[:5]
                exit_code = None
            if "." in job_id:  # a step (batch, extern, 0 ...): not the allocation
                continue
            state = normalise(native)
            # %S is the estimate only while the job waits (then the real start); "N/A" or "Unknown" when none
            start = start if state is JobState.PENDING and start[:1].isdigit() else ""
            for task in expand_array_id(job_id):
                statuses[task] = NativeStatus(task, state, native, exit_code, reason, nodes, start)
        return StatusAnswer(Verdict.ANSWERED, statuses)

    @staticmethod
    def _failed(query: StatusQuery, stderr: str) -> StatusAnswer:
        """What a status command that exited non-zero means."""
        if query.argv[0] == "sacct" and "accounting storage is disabled" in stderr.lower():
            # the site-config said this cluster keeps accounting; it does not: squeue + scontrol from now on
            return StatusAnswer(
                Verdict.ASK_AGAIN,
                note="it has no Slurm accounting; using squeue and scontrol show job (set `accounting = false` in "
                "its site-config)",
                facts=dataclasses.replace(query.facts, accounting=False),
            )
        if query.argv[0] == "squeue" and "Invalid job id" in stderr:
            return StatusAnswer(Verdict.ANSWERED)  # squeue forgot every one of them: scontrol show job per task
        return StatusAnswer(Verdict.RETRY)

    def show_job_argv(self, task_id: str, facts: ClusterFacts) -> Optional[List[str]]:
        """``scontrol show job`` for a job that left squeue's view (accounting off; sacct has every job)."""
        if facts.accounting:
            return None
        return ["scontrol", "--oneliner", "show", "job", task_id]

    def parse_show_job(self, task_id: str, stdout: str) -> Optional[NativeStatus]:
        fields = dict(tok.split("=", 1) for tok in stdout.split() if "=" in tok)
        native = fields.get("JobState")
        if native is None:
            return None
        return NativeStatus(
            task_id,
            normalise(native),
            native,
            _exit_code(fields.get("ExitCode", "")),
            fields.get("Reason", ""),
            fields.get("NodeList", ""),
        )

    def show_job_failed(self, task_id: str, returncode: int, stderr: str) -> Optional[NativeStatus]:
        """``Invalid job id specified``: slurmctld has forgotten the job (MinJobAge after it ended; without
        accounting nothing else remembers it). Finished, with its outcome unknown: its result file, if any, says."""
        if returncode != 0 and "Invalid job id specified" in stderr:
            return NativeStatus(task_id, JobState.COMPLETED, GONE_FROM_SLURMCTLD)
        return None

    def cancelled_for_dependency(self, status: NativeStatus) -> bool:
        """sacct says "CANCELLED by UID" for a user's scancel and a plain "CANCELLED" for slurmctld's own
        (--kill-on-invalid-dep). squeue and scontrol (no accounting) print a plain "CANCELLED" for both; their
        reason tells: ``DependencyNeverSatisfied`` for slurmctld's, the pending reason (``Dependency``) for a
        user's (both seen on Slurm 22.05)."""
        if not super().cancelled_for_dependency(status):
            return False
        return not status.reason or status.reason == "DependencyNeverSatisfied"

    def explain_end(self, status: NativeStatus, stderr_tail: str) -> NativeStatus:
        """A job killed for its memory by the accounting poll: OUT_OF_MEMORY, whatever state Slurm gave it."""
        if status.state in (JobState.FAILED, JobState.CANCELLED) and MEMORY_KILL.search(stderr_tail):
            return dataclasses.replace(status, state=JobState.OUT_OF_MEMORY)
        return status

    def confirm_end_argv(self, status: NativeStatus, facts: ClusterFacts) -> Optional[List[str]]:
        """sacct's newest record of a job that Slurm requeues itself (PreemptMode=REQUEUE, a node failure of a
        requeueable job) says PREEMPTED or NODE_FAIL until slurmctld has made the next record: ``scontrol show job``
        says whether it is pending again (squeue and scontrol, without accounting, show slurmctld's state)."""
        if facts.accounting and status.state in (JobState.PREEMPTED, JobState.NODE_FAIL):
            return ["scontrol", "--oneliner", "show", "job", status.job_id]
        return None

    def attempts_argv(self, task_id: str, facts: ClusterFacts) -> Optional[List[str]]:
        """``sacct --duplicates``: every record of the job id, one per run (a requeue starts a new one). Without
        accounting ``scontrol show job``: slurmctld's record of the newest run and how often it was restarted
        (``Restarts=``); the earlier runs are known only from the batch shell's notes (docs/requeue.md)."""
        if not facts.accounting:
            return ["scontrol", "--oneliner", "show", "job", task_id]
        return ["sacct", "--noheader", "--parsable2", "--allocations", "--duplicates",
                "--format=JobID,State,NodeList,Submit,Start,End,ElapsedRaw,AllocCPUS", f"--jobs={task_id}"]

    def parse_attempts(self, stdout: str) -> List[Tuple[str, str, str, str]]:
        shown = _shown_job(stdout)
        if shown is not None:  # scontrol (no accounting): a REQUEUED placeholder per earlier run, then the newest
            restarts, fields = shown
            nodes = fields.get("NodeList", "")
            newest = (fields.get("JobState", ""), "" if nodes == "(null)" else nodes, fields.get("StartTime", ""),
                      fields.get("EndTime", ""))
            return [("REQUEUED", "", "", "")] * restarts + [newest]
        return [(p[1], p[2], p[4], p[5]) for p in _attempt_rows(stdout)]

    def parse_attempt_costs(self, stdout: str) -> List[Tuple[Optional[float], Optional[int]]]:
        def number(parts: List[str], i: int) -> Optional[str]:
            return parts[i] if len(parts) > i and parts[i].isdigit() else None

        shown = _shown_job(stdout)
        if shown is not None:  # scontrol: no figures of the earlier runs (the newest one's are not needed)
            return [(None, None)] * (shown[0] + 1)
        out: List[Tuple[Optional[float], Optional[int]]] = []
        for p in _attempt_rows(stdout):
            elapsed, cpus = number(p, 6), number(p, 7)
            out.append((None if elapsed is None else float(elapsed), None if cpus is None else int(cpus)))
        return out

    def cancel_argv(self, job_ids: Sequence[str]) -> List[str]:
        return ["scancel", *job_ids]

    @classmethod
    def time_left_argv(cls, job_id: str) -> Optional[List[str]]:
        """``%L``: the time left, relative (no clock or time zone of the cluster's involved)."""
        return ["squeue", "--noheader", f"--jobs={job_id}", "--format=%L"]

    @classmethod
    def parse_time_left(cls, stdout: str) -> Optional[int]:
        return slurm_duration(stdout.strip().splitlines()[0] if stdout.strip() else "")

    # -- after= ids ---------------------------------------------------------------------------------------
    def lookup_queries(self, job_ids: Sequence[str], facts: ClusterFacts) -> List[List[str]]:
        """squeue (what slurmctld holds: queued, running, ended less than MinJobAge ago), then sacct for the jobs
        it forgot. slurmctld takes a dependency on a job it does not hold for one long done, so without this
        check ``after="12345"`` with a mistyped id would start at once (seen on Slurm 22.05)."""
        ids = ",".join(job_ids)
        queries = [["squeue", "--noheader", "--array", "--states=all", "--format=%i|%A|%T", f"--jobs={ids}"]]
        if facts.accounting:  # sacct with --jobs and no --starttime: every record, however old
            queries.append(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,JobIDRaw,State",
                            f"--jobs={ids}"])
        return queries

    def parse_lookup(self, job_ids: Sequence[str], out: Output) -> Optional[Dict[str, JobState]]:
        """Rows ``ID|RAW ID|STATE``; an id is found as itself, as an array's tasks (``123`` -> ``123_4``), or as
        the raw id of an array task (``SLURM_JOB_ID`` inside one). squeue's "Invalid job id specified": none."""
        if out.returncode != 0:
            return {} if "Invalid job id specified" in out.stderr else None
        rows: Dict[str, Tuple[str, JobState]] = {}  # job id -> (raw id, state); the last record of an id wins
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 3 and parts[0] and "." not in parts[0]:
                rows[parts[0]] = (parts[1], normalise(parts[2]))
        found: Dict[str, JobState] = {}
        for want in job_ids:
            states = [state for job_id, (raw, state) in rows.items()
                      if job_id == want or raw == want or job_id.startswith(f"{want}_")]
            if states:
                live = [s for s in states if not s.is_final]
                bad = [s for s in states if s is not JobState.COMPLETED]
                found[want] = (live or bad or [JobState.COMPLETED])[0]
        return found

    # -- usage of finished jobs ---------------------------------------------------------------------------
    def usage_argv(
        self, job_ids: Sequence[str], since_epoch: float, now_epoch: float, facts: ClusterFacts
    ) -> Optional[List[str]]:
        """sacct with the steps (accounting), else ``scontrol show job`` (every job slurmctld holds: one command)."""
        if facts.accounting:
            return slurm_usage.sacct_argv(job_ids, since_epoch, now_epoch)
        return slurm_usage.scontrol_argv()

    def parse_usage(self, out: Output, facts: ClusterFacts) -> Dict[str, Tuple[Measured, bool]]:
        if facts.accounting:
            return slurm_usage.parse_sacct(out)
        return slurm_usage.parse_scontrol(out)


def _shown_job(stdout: str) -> Optional[Tuple[int, Dict[str, str]]]:
    """``(restarts, fields)`` of ``scontrol --oneliner show job`` output (one job), or None for sacct's."""
    if not stdout.lstrip().startswith("JobId="):
        return None
    fields = dict(tok.split("=", 1) for tok in stdout.splitlines()[0].split() if "=" in tok)
    restarts = fields.get("Restarts", "0")
    return (int(restarts) if restarts.isdigit() else 0), fields


def _attempt_rows(stdout: str) -> List[List[str]]:
    """:meth:`Slurm.attempts_argv`'s job lines (no steps), by submit time (a requeue resets it), then start."""
    rows = []
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6 or "." in parts[0] or not parts[0]:
            continue
        rows.append(parts)
    rows.sort(key=lambda p: (p[3], p[4]))
    return rows
