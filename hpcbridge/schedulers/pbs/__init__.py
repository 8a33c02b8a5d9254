"""PBS adapter: PBS Professional / OpenPBS and Torque through qsub, qstat and qdel (pure argv builders and parsers).

The flavour comes from the site-config (``flavour = "pbspro"`` or ``"torque"``):

============  ===================================================  ==============================================
              PBS Pro / OpenPBS                                    Torque
============  ===================================================  ==============================================
resources     ``-l select=N:ncpus=C:mpiprocs=T:ngpus=G:mem=Mmb``   ``-l nodes=N:ppn=C[:gpus=G]``, ``-l mem=``
              ``-l place=scatter`` when N > 1                      (job-wide: per-node memory x N)
arrays        ``-J 0-99[%P]``, ids ``123[].srv`` / ``123[4].srv``  ``-t 0-99[%P]``, the same ids
task index    ``$PBS_ARRAY_INDEX``                                 ``$PBS_ARRAYID``
status        ``qstat -f -F json -x -t IDS`` (finished jobs too;   ``qstat -f [-t] IDS`` (text)
              no ``-x`` with ``accounting = false``)
cancel        ``qdel IDS``                                         ``qdel IDS``
after=        ``-W depend=afterok:ID:ID`` (arrays ``123[].srv``)   ``-W depend=afterok:ID,afterokarray:123[].srv``
============  ===================================================  ==============================================

Both: ``-N`` name, ``-l walltime=HH:MM:SS``, ``-q`` queue (the ``partition`` resource), ``-A`` account, and the
job's own stdout/stderr written by the script to ``log/<task>.out|err`` (PBS spools a job's output on the
execution host and copies it back only at the end; the script's own files are live and per task whatever the
flavour's rules for array output paths). The scheduler's messages go to ``log/pbs.out``, given on the qsub
command line because Torque-compatible layers over Slurm (Debian's ``slurm-wlm-torque``) override ``#PBS -o``.

Jobs leave ``qstat`` when they finish (Torque after ``keep_completed``, PBS Pro without job history, which a
site-config says with ``accounting = false``: then no query asks for history): a job that a successful query no
longer lists is taken as finished with its exit status unknown
(:meth:`PBSScheduler.missing_statuses`); its result file decides.

Torque-compatible layers over Slurm print a plain id (``46``) for an array and cannot name its tasks: such "bare"
arrays are followed as a group (:mod:`.wrappers`). The qstat parsers are in :mod:`.qstat`, the state and exit
tables in :mod:`.codes`.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from ...errors import ConfigError, ConnectionLostError, ResourceError, SchedulerError
from ...spec import RESOURCE_NAMES, Resources
from ...state import JobState
from ...store import JobFolder
from ...usage import Measured
from ..base import (
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
from . import wrappers
from .codes import expand_parent, record_status
from .qstat import Record, answered, array_key, expand_range, parse_qstat_json, parse_qstat_text, resources_used

__all__ = ["FLAVOURS", "PBSScheduler", "check_folder", "expand_range", "parse_qstat_json", "parse_qstat_text"]

FLAVOURS = ("pbspro", "torque")

#: what a path in a -o argument or a #PBS line may hold (':' would read as host:path, ',' separates the values of a
#: PBS option's list; the Slurm-backed qsub builds a shell command from it and sbatch expands '%' patterns in it)
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@=\-]+$")
_JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.\-]+)?$")
_PBS_OPTION = re.compile(r"^-[A-Za-z](\s+\S.*)?$")
_GONE = "gone from qstat (it finished; its exit status is no longer kept)"


class PBSScheduler(Scheduler):
    """PBS Pro / OpenPBS or Torque through their command-line tools."""

    name = "pbs"
    template = "pbs.sh.j2"
    flavours = FLAVOURS
    supports_after = True
    per_node_launcher = "mpirun"
    hostfile = True
    scrub_prefixes = ("PBS_",)
    safe_commands = frozenset({"qstat", "pbsnodes", "tracejob"})
    supported_resources: FrozenSet[str] = frozenset(RESOURCE_NAMES)
    why_not: Mapping[str, str] = {}
    #: requeue (docs/requeue.md): qrerun is for operators only, so a warned run submits a follow-up job that depends
    #: on it (-W depend=afterany) and continues from the checkpoint; the shell's own timer warns it
    requeue_template = "partials/requeue_pbs.sh.j2"
    requeue_by_follow_up = True

    def __init__(self, flavour: str = "pbspro", accounting: bool = True) -> None:
        if flavour not in FLAVOURS:
            raise ConfigError(f"PBS flavour {flavour!r}: use one of {', '.join(FLAVOURS)}")
        self.flavour = flavour
        #: PBS Pro: whether the server keeps job history (``qstat -x`` lists finished jobs); the site-config's
        #: ``accounting``. Torque's qstat has no history option: its queries are the same either way.
        self.accounting = accounting
        #: shell expression giving the task index; Torque-compatible layers over Slurm set no PBS_* variables
        self.task_index_expr = (
            "${PBS_ARRAY_INDEX:-0}" if flavour == "pbspro" else "${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}"
        )

    @classmethod
    def from_site(cls, site: SiteConfig, root: str) -> PBSScheduler:
        check_folder(root)  # every job folder is below it: refused before anything is written
        return cls(flavour=site.flavour or "pbspro", accounting=site.accounting)

    @classmethod
    def time_left_argv(cls, job_id: str) -> Optional[List[str]]:
        """``qstat -f``: the walltime limit and the walltime used so far (PBS Pro and Torque alike)."""
        return ["qstat", "-f", job_id]

    @classmethod
    def parse_time_left(cls, stdout: str) -> Optional[int]:
        from .codes import _seconds

        fields = dict(
            (key.strip(), value.strip()) for key, sep, value in (line.partition("=") for line in stdout.splitlines())
            if sep
        )
        limit = _seconds(fields.get("Resource_List.walltime", ""))
        used = _seconds(fields.get("resources_used.walltime", "0")) or 0
        return None if limit is None else max(0, limit - used)

    def initial_facts(self) -> ClusterFacts:
        return ClusterFacts(accounting=self.accounting)

    @classmethod
    def default_launcher(cls, res: Resources) -> Optional[str]:
        """mpirun for a job of more than one task: PBS has no srun, and its users expect an MPI launch."""
        return "mpirun" if res.ntasks > 1 else None

    # -- submission -----------------------------------------------------------------------------------------
    def directives(self, req: ScriptRequest) -> List[str]:
        r = req.resources
        check_folder(req.folder)
        self._check(r, req.job_name)
        out = [f"-N {req.job_name}", f"-o {JobFolder(req.folder).pbs_log}", "-j oe"]
        if self.flavour == "pbspro":
            out += self._select(r)
        else:
            out += self._nodes(r)
        if r.walltime_hms is not None:
            out.append(f"-l walltime={r.walltime_hms}")
        if r.partition:
            out.append(f"-q {r.partition}")
        if r.account:
            out.append(f"-A {r.account}")
        n = req.array_size
        if n is not None and (n > 1 or self.flavour == "torque"):
            spec = f"0-{n - 1}" + (f"%{r.array_parallelism}" if r.array_parallelism else "")
            if self.flavour == "pbspro":
                # a one-task range (0-0) is "illegal -J value" on PBS Pro: such arrays go as plain jobs
                out += [f"-J {spec}", "-r y"]  # sites whose default Rerunable is False refuse arrays without -r y
            else:
                out.append(f"-t {spec}")
        if r.after:
            out += self._depend(r.after)
        if r.requeue:
            out += self._requeue(r, n)
        out.extend(r.extra_directives)
        return out

    def _requeue(self, r: Resources, array_size: Optional[int]) -> List[str]:
        """requeue on (docs/requeue.md): rerunnable (``-r y``: the server runs it again after a node failure). The
        follow-up job that continues a warned run is this script submitted again, a plain job: arrays are refused."""
        if array_size is not None and (array_size > 1 or self.flavour == "torque"):
            raise ResourceError(
                f"requeue={r.requeue} with map() (an array of {array_size} tasks): on PBS a warned run continues in a "
                "follow-up job, which hpcbridge makes for plain jobs only; submit the calls one by one (submit()), "
                "or use requeue=0 for the map"
            )
        return ["-r y"]

    def _depend(self, after: Sequence[str]) -> List[str]:
        """``after=``: ``-W depend=afterok:ID[:ID...]``, start only once every one completed with exit status 0.

        Arrays: PBS Pro takes the array's id (``afterok:123[].srv``); Torque has its own type for arrays
        (``afterokarray:123[].srv``, joined to ``afterok:`` by a comma: ``type:ids[,type:ids]``, qsub(1B)).
        Neither waits for a single subjob (PBS Pro refuses ``123[4]`` in depend: openpbs ``depend_on_que``).
        A dependent of a job that failed is deleted by the PBS server; the Slurm-backed wrappers (Torque
        flavour) leave it pending, so for them the script also says ``#SBATCH --kill-on-invalid-dep=yes``
        (their sbatch reads both ``#PBS -W depend=`` and ``#SBATCH`` lines; a comment to a real PBS).
        """
        jobs: List[str] = []
        arrays: List[str] = []
        for job_id in after:
            if not _JOB_ID.match(job_id):
                raise ResourceError(
                    f"after: {job_id!r} is not a PBS job id (123.server, or 123[].server for a whole array)"
                )
            if re.search(r"\[\d+\]", job_id):
                raise ResourceError(
                    f"after: {job_id} is one task of the array {array_key(job_id)}: PBS waits only for whole jobs "
                    "and arrays; wait for every job of the map (after=jobs), or submit the calls to wait for as "
                    "separate jobs"
                )
            (arrays if "[]" in job_id else jobs).append(job_id)
        if self.flavour == "pbspro":
            return [f"-W depend=afterok:{':'.join(jobs + arrays)}"]
        types = ([f"afterok:{':'.join(jobs)}"] if jobs else []) + (
            [f"afterokarray:{':'.join(arrays)}"] if arrays else []
        )
        return [f"-W depend={','.join(types)}", "#SBATCH --kill-on-invalid-dep=yes"]

    def _check(self, r: Resources, name: str) -> None:
        if r.qos:
            raise ResourceError(
                f"qos={r.qos!r}: PBS has no quality-of-service option; use partition= for the queue (-q) or "
                "extra_directives=['-l <resource>=<value>'] for site resources"
            )
        if not re.match(r"^[A-Za-z0-9]", name):
            raise ResourceError(f"name={name!r}: PBS job names must start with a letter or digit")
        for item in r.extra_directives:
            if not _PBS_OPTION.match(item):
                raise ResourceError(
                    f"extra_directives entry {item!r} is not a PBS option; PBS options look like "
                    "'-l place=excl', '-W group_list=proj' or '-P project'"
                )

    @staticmethod
    def _select(r: Resources) -> List[str]:
        chunk = [str(r.nodes), f"ncpus={r.tasks_per_node * r.cpus_per_task}", f"mpiprocs={r.tasks_per_node}"]
        if r.gpus_per_node:
            chunk.append(f"ngpus={r.gpus_per_node}")
        if r.mem_mb is not None:
            chunk.append(f"mem={r.mem_mb}mb")
        out = [f"-l select={':'.join(chunk)}"]
        if r.nodes > 1:
            out.append("-l place=scatter")  # one chunk per host: nodes=N means N hosts
        return out

    @staticmethod
    def _nodes(r: Resources) -> List[str]:
        spec = f"nodes={r.nodes}:ppn={r.tasks_per_node * r.cpus_per_task}"
        if r.gpus_per_node:
            spec += f":gpus={r.gpus_per_node}"
        out = [f"-l {spec}"]
        if r.mem_mb is not None:
            out.append(f"-l mem={r.mem_mb * r.nodes}mb")  # Torque's mem is for the whole job
        return out

    def submit_argv(self, script_path: str) -> List[str]:
        folder = posixpath.dirname(script_path)
        check_folder(folder)
        # -o/-j on the command line too: Torque-compatible layers over Slurm ignore #PBS -o and -j and would
        # otherwise write <name>.o<id> files into the submitting process's current directory.
        # PBS Pro: -f (foreground) keeps qsub from leaving its background daemon behind, which would hold the
        # command's stdout open (over SSH: the channel would not close). Torque's -f means "fault tolerant".
        fg = ["-f"] if self.flavour == "pbspro" else []
        return ["qsub", *fg, "-j", "oe", "-o", JobFolder(folder).pbs_log, script_path]

    def parse_submit(self, stdout: str) -> str:
        for line in reversed(stdout.strip().splitlines()):
            token = line.strip()
            if _JOB_ID.match(token):
                return token
        raise SchedulerError(f"qsub printed no job id: {stdout.strip()!r}")

    def find_by_tag_argv(self, tag: str) -> List[str]:
        """Every job qstat knows, with its attributes (PBS Pro: finished ones too, while history is kept; no ``-x``
        with ``accounting = false``).

        Used after a connection dropped while ``qsub`` ran, to find the job instead of submitting it twice. A job
        carries its submission's tag in its folder, hence in its ``Output_Path`` (``-o <folder>/log/pbs.out``).
        """
        if self.flavour == "pbspro":
            return ["qstat", "-f", "-F", "json", *(["-x"] if self.accounting else [])]
        return ["qstat", "-f"]

    def parse_find_by_tag(self, stdout: str, tag: str) -> Optional[str]:
        """The id of the job whose ``Output_Path`` is ``<root>/TAG/log/pbs.out`` (an array's own id), or None.

        Raises :class:`ConnectionLostError` when qstat lists jobs but shows no ``Output_Path`` for any of them
        (the Slurm-backed wrappers print only a few attributes): then whether the job exists cannot be told, and
        submitting it again could run it twice.
        """
        records = self._records(stdout)
        suffix = _log_suffix(tag)
        shown = False
        for job_id, rec in records.items():
            path = rec.get("Output_Path")
            if path is None:
                continue
            shown = True
            if path.split(":", 1)[-1].endswith(suffix) and not re.search(r"\[\d+\]", job_id):
                return job_id  # a job, or an array's own record (123[].srv), never one of its subjobs
        if records and not shown:
            raise ConnectionLostError(
                f"qsub's outcome is unknown (the connection dropped or it hung), and this site's qstat shows no "
                f"Output_Path, so whether the job was submitted cannot be told (submitting it again could run it "
                f"twice): look for a job writing to ...{suffix}, its folder is kept",
                maybe_ran=True,
            )
        return None

    def find_by_tag_hint(self, tag: str) -> str:
        """Where a user looks for the job themselves."""
        return f"its output goes to ...{_log_suffix(tag)}: see `qstat -f` (Output_Path)"

    def task_id(self, job_id: str, index: int, is_array: bool) -> str:
        if not is_array:
            return job_id
        if "[]" in job_id:
            return job_id.replace("[]", f"[{index}]", 1)
        if self.flavour == "torque" and job_id.isdigit():
            return f"{job_id}[{index}]"  # a bare array (wrappers.py)
        return job_id  # PBS Pro: a one-task array was submitted as a plain job

    # -- status ---------------------------------------------------------------------------------------------
    def status_query(
        self,
        job_ids: Sequence[str],
        since_epoch: float,
        now_epoch: float,
        facts: ClusterFacts,
        arrays: Optional[Mapping[str, int]] = None,
    ) -> StatusQuery:
        """One qstat for every job: PBS Pro with subjobs (``-t``) and, unless the site keeps no job history
        (``facts.accounting``, from ``accounting = false``), finished jobs (``-x``). Without history a finished job
        leaves qstat, and :meth:`missing_statuses` takes it as over."""
        if self.flavour == "pbspro":
            argv = ["qstat", "-f", "-F", "json", *(["-x"] if facts.accounting else []), "-t", *job_ids]
        elif wrappers.bare_arrays(job_ids, arrays or {}):
            # a bare array's started tasks are listed under ids nobody told us: ask for every job
            argv = ["qstat", "-f"]
        else:
            argv = ["qstat", "-f", *(["-t"] if any("[]" in j for j in job_ids) else []), *job_ids]
        return StatusQuery(argv, tuple(job_ids), facts, dict(arrays or {}))

    def status_exit_ok(self, returncode: int, stderr: str) -> bool:
        """Whether a qstat that exited non-zero still answered: it does so when some jobs are unknown."""
        return answered(returncode, stderr)

    def parse_status(self, query: StatusQuery, out: Output) -> StatusAnswer:
        if out.returncode != 0 and not self.status_exit_ok(out.returncode, out.stderr):
            return StatusAnswer(Verdict.RETRY)
        records = self._records(out.stdout)
        if not records and out.returncode == 0:
            # qstat exits 0 only when it found the jobs: an empty answer is a broken one, not "all gone"
            raise SchedulerError(f"qstat reported no job and no error: {out.stdout.strip()[:300]!r}")
        statuses: Dict[str, NativeStatus] = {}
        for job_id, rec in records.items():
            statuses[job_id] = record_status(self.flavour, job_id, rec)
        for job_id, rec in records.items():
            if job_id.count("[]") == 1:
                expand_parent(job_id, rec, statuses)
        if self.flavour != "torque":
            return StatusAnswer(Verdict.ANSWERED, statuses)
        keys = dict(query.facts.bare_array_keys)
        for base, size in wrappers.bare_arrays(query.job_ids, query.arrays).items():
            key = wrappers.bare_group(base, size, keys.get(base), records, statuses)
            if key is not None:
                keys[base] = key
        learned = keys != dict(query.facts.bare_array_keys)
        facts = dataclasses.replace(query.facts, bare_array_keys=keys) if learned else None
        return StatusAnswer(Verdict.ANSWERED, statuses, facts=facts)

    def missing_statuses(
        self, statuses: Mapping[str, NativeStatus], task_ids: Sequence[str]
    ) -> Dict[str, NativeStatus]:
        """Tasks a successful query did not list: gone, so finished with an unknown exit status.

        No news for a task of an array of which something is still listed (PBS may not have made its subjob
        yet), nor for the tasks of bare arrays, which only their group says anything about.
        """
        listed = {array_key(job_id) for job_id in statuses if "[" in job_id}
        out: Dict[str, NativeStatus] = {}
        for task_id in task_ids:
            if wrappers.is_bare_task(task_id) or ("[" in task_id and array_key(task_id) in listed):
                continue
            out[task_id] = NativeStatus(task_id, JobState.COMPLETED, _GONE)
        return out

    def _records(self, stdout: str) -> Dict[str, Record]:
        return parse_qstat_json(stdout) if self.flavour == "pbspro" else parse_qstat_text(stdout)

    # -- usage of finished jobs ---------------------------------------------------------------------------
    def usage_argv(
        self, job_ids: Sequence[str], since_epoch: float, now_epoch: float, facts: ClusterFacts
    ) -> Optional[List[str]]:
        """The status query's qstat: ``resources_used.*`` where the server shows them."""
        return self.status_query(job_ids, since_epoch, now_epoch, facts).argv

    def parse_usage(self, out: Output, facts: ClusterFacts) -> Dict[str, Tuple[Measured, bool]]:
        if out.returncode != 0 and not self.status_exit_ok(out.returncode, out.stderr):
            return {}
        answer: Dict[str, Tuple[Measured, bool]] = {}
        for job_id, rec in self._records(out.stdout).items():
            status = record_status(self.flavour, job_id, rec)
            answer[job_id] = (resources_used(rec, status.state.value), status.state.is_final)
        return answer

    # -- cancel ---------------------------------------------------------------------------------------------
    def cancel_argv(self, job_ids: Sequence[str]) -> List[str]:
        wrappers.check_cancel(job_ids)
        return ["qdel", *job_ids]


def check_folder(folder: str) -> None:
    """Job folders appear in ``-o`` paths and ``#PBS`` lines: no spaces, quotes, ``:``, ``,``, ``%`` or shell
    characters."""
    if not _SAFE_PATH.match(folder):
        raise ResourceError(
            f"the job folder {folder!r} cannot be given to PBS: -o paths and #PBS lines take letters, digits and "
            "/ . _ + - @ = only (':' reads as host:path, ',' separates a list's values, '%' starts a file name "
            "pattern, and spaces, quotes or shell characters break the Slurm-backed qsub); choose a workdir "
            "(site-config) or folder= of those characters"
        )


def _log_suffix(tag: str) -> str:
    """``/TAG/log/pbs.out``: how the scheduler log path of the job tagged ``TAG`` ends."""
    return JobFolder(f"/{tag}").pbs_log
