"""PBS adapter: PBS Professional / OpenPBS and Torque through qsub, qstat and qdel (pure argv builders and parsers).

The flavour comes from the site-config (``flavour = "pbspro"`` or ``"torque"``):

============  ===================================================  ==============================================
              PBS Pro / OpenPBS                                    Torque
============  ===================================================  ==============================================
resources     ``-l select=N:ncpus=C:mpiprocs=T:ngpus=G:mem=Mmb``   ``-l nodes=N:ppn=C[:gpus=G]``, ``-l mem=``
              ``-l place=scatter`` when N > 1                      (job-wide: per-node memory x N)
arrays        ``-J 0-99[%P]``, ids ``123[].srv`` / ``123[4].srv``  ``-t 0-99[%P]``, the same ids
task index    ``$PBS_ARRAY_INDEX``                                 ``$PBS_ARRAYID``
status        ``qstat -f -F json -x -t IDS`` (finished jobs too)   ``qstat -f [-t] IDS`` (text)
cancel        ``qdel IDS``                                         ``qdel IDS``
after=        ``-W depend=afterok:ID:ID`` (arrays ``123[].srv``)   ``-W depend=afterok:ID,afterokarray:123[].srv``
============  ===================================================  ==============================================

Both: ``-N`` name, ``-l walltime=HH:MM:SS``, ``-q`` queue (the ``partition`` resource), ``-A`` account, and the
job's own stdout/stderr written by the script to ``log/<task>.out|err`` (PBS spools a job's output on the
execution host and copies it back only at the end; the script's own files are live and per task whatever the
flavour's rules for array output paths). The scheduler's messages go to ``log/pbs.out``, given on the qsub
command line because Torque-compatible layers over Slurm (Debian's ``slurm-wlm-torque``) override ``#PBS -o``.

Jobs leave ``qstat`` when they finish (Torque after ``keep_completed``, PBS Pro without job history): a job
that a successful query no longer lists is taken as finished with its exit status unknown
(:meth:`PBSScheduler.missing_status`); its result file decides.

Torque-compatible layers over Slurm print a plain id (``46``) for an array and cannot name its tasks: their
``qstat`` shows each started task under an unrelated Slurm id and their ``qdel 46[1]`` cancels the whole array.
Such "bare" arrays are followed as a group (:meth:`PBSScheduler.parse_status`) and their tasks cannot be
cancelled one by one (docs/pbs.md).
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ..errors import ConnectionLostError, ResourceError, SchedulerError
from ..spec import Resources
from ..state import JobState
from .base import NativeStatus, Scheduler, ScriptRequest, StatusFailure

FLAVOURS = ("pbspro", "torque")

#: PBS Pro / OpenPBS ``job_state`` letters (qstat(1B)); ``F`` and ``X`` are final and read with Exit_status.
PBSPRO_STATES: Dict[str, JobState] = {
    "B": JobState.RUNNING,  # array job: at least one subjob has begun
    "E": JobState.RUNNING,  # exiting after having run
    "H": JobState.PENDING,  # held
    "M": JobState.PENDING,  # moved to another server (peer scheduling); still alive there
    "Q": JobState.PENDING,  # queued
    "R": JobState.RUNNING,
    "S": JobState.RUNNING,  # suspended by the server
    "T": JobState.PENDING,  # being moved (transit)
    "U": JobState.RUNNING,  # cycle-harvesting job suspended by keyboard activity
    "W": JobState.PENDING,  # waiting for its start time (or a failed stage-in)
}
#: Torque ``job_state`` letters; ``C`` (completed) is final and read with exit_status.
TORQUE_STATES: Dict[str, JobState] = {
    "E": JobState.RUNNING,
    "H": JobState.PENDING,
    "Q": JobState.PENDING,
    "R": JobState.RUNNING,
    "S": JobState.RUNNING,
    "T": JobState.PENDING,
    "W": JobState.PENDING,
    "U": JobState.UNKNOWN,  # slurm-wlm-torque's "unknown Slurm state"
}
FINAL_CODES = {"pbspro": ("F", "X"), "torque": ("C",)}

#: PBS Pro's own exit statuses (``JOB_EXEC_*``, openpbs src/include/job.h) -> (name, state)
PBSPRO_EXIT: Dict[int, Tuple[str, JobState]] = {
    -1: ("JOB_EXEC_FAIL1", JobState.FAILED),
    -2: ("JOB_EXEC_FAIL2", JobState.FAILED),
    -3: ("JOB_EXEC_RETRY", JobState.FAILED),
    -4: ("JOB_EXEC_INITABT", JobState.FAILED),
    -5: ("JOB_EXEC_INITRST", JobState.FAILED),
    -6: ("JOB_EXEC_INITRMG", JobState.FAILED),
    -7: ("JOB_EXEC_BADRESRT", JobState.FAILED),
    -10: ("JOB_EXEC_FAILUID", JobState.FAILED),
    -11: ("JOB_EXEC_RERUN", JobState.FAILED),
    -12: ("JOB_EXEC_CHKP", JobState.FAILED),
    -13: ("JOB_EXEC_FAIL_PASSWORD", JobState.FAILED),
    -14: ("JOB_EXEC_RERUN_SIS_FAIL", JobState.NODE_FAIL),
    -15: ("JOB_EXEC_QUERST", JobState.FAILED),
    -16: ("JOB_EXEC_FAILHOOK_RERUN", JobState.FAILED),
    -17: ("JOB_EXEC_FAILHOOK_DELETE", JobState.FAILED),
    -18: ("JOB_EXEC_HOOK_RERUN", JobState.FAILED),
    -19: ("JOB_EXEC_HOOK_DELETE", JobState.FAILED),
    -20: ("JOB_EXEC_RERUN_MS_FAIL", JobState.NODE_FAIL),
    -21: ("JOB_EXEC_FAIL_SECURITY", JobState.FAILED),
    -22: ("JOB_EXEC_HOOKERROR", JobState.FAILED),
    -23: ("JOB_EXEC_FAIL_KRB5", JobState.FAILED),
    -24: ("JOB_EXEC_KILL_NCPUS_BURST", JobState.FAILED),
    -25: ("JOB_EXEC_KILL_NCPUS_SUM", JobState.FAILED),
    -26: ("JOB_EXEC_KILL_VMEM", JobState.OUT_OF_MEMORY),
    -27: ("JOB_EXEC_KILL_MEM", JobState.OUT_OF_MEMORY),
    -28: ("JOB_EXEC_KILL_CPUT", JobState.FAILED),
    -29: ("JOB_EXEC_KILL_WALLTIME", JobState.TIMEOUT),
    -30: ("JOB_EXEC_JOINJOB", JobState.FAILED),
}
#: Torque's own exit statuses (Torque 6 "Job Exit Status"; -10..-12 differ from PBS Pro's meaning)
TORQUE_EXIT: Dict[int, Tuple[str, JobState]] = {
    -1: ("JOB_EXEC_FAIL1", JobState.FAILED),
    -2: ("JOB_EXEC_FAIL2", JobState.FAILED),
    -3: ("JOB_EXEC_RETRY", JobState.FAILED),
    -4: ("JOB_EXEC_INITABT", JobState.FAILED),
    -5: ("JOB_EXEC_INITRST", JobState.FAILED),
    -6: ("JOB_EXEC_INITRMG", JobState.FAILED),
    -7: ("JOB_EXEC_BADRESRT", JobState.FAILED),
    -8: ("JOB_EXEC_CMDFAIL", JobState.FAILED),
    -9: ("JOB_EXEC_STDOUTFAIL", JobState.FAILED),
    -10: ("JOB_EXEC_OVERLIMIT_MEM", JobState.OUT_OF_MEMORY),
    -11: ("JOB_EXEC_OVERLIMIT_WT", JobState.TIMEOUT),
    -12: ("JOB_EXEC_OVERLIMIT_CPUT", JobState.FAILED),
    -13: ("JOB_EXEC_CGROUP", JobState.FAILED),
    -14: ("JOB_EXEC_PROLOGUE", JobState.FAILED),
}
#: PBS Pro history substate of a job ended by a delete request (openpbs job.h: JOB_SUBSTATE_TERMINATED)
SUBSTATE_TERMINATED = "91"
#: Both report a job killed by a signal as 256 + the signal's number.
SIGNAL_BASE = 256
_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 12: "SIGUSR2", 15: "SIGTERM"}

#: qstat's exit status when (some of) the given jobs are unknown: PBSE_UNKJOBID (15001) & 0xff
EXIT_UNKNOWN_JOB = 153
_UNKNOWN_JOB_LINE = re.compile(r"unknown job id|job has finished|does not exist", re.IGNORECASE)

#: what a path in a -o argument or a #PBS line may hold (':' would read as host:path; the Slurm-backed qsub
#: builds a shell command from it and sbatch expands '%' patterns in it)
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@=\-]+$")
_JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.\-]+)?$")
_BARE_TASK = re.compile(r"^(\d+)\[(\d+)\]$")
_PBS_OPTION = re.compile(r"^-[A-Za-z](\s+\S.*)?$")


def walltime_arg(seconds: int) -> str:
    """PBS walltime: ``HH:MM:SS`` with hours past 24 (``93784`` -> ``26:03:04``)."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def _seconds(hms: str) -> Optional[int]:
    """``'01:02:03'`` -> 3723; ``'90'`` -> 90; None when it is not a duration."""
    parts = hms.strip().split(":")
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    total = 0
    for p in parts:
        total = total * 60 + int(p)
    return total


def expand_range(spec: str) -> List[int]:
    """PBS index ranges: ``'0-4:2,7'`` -> ``[0, 2, 4, 7]`` (an optional ``%N`` limit is ignored)."""
    out: List[int] = []
    for part in spec.split("%", 1)[0].split(","):
        part = part.strip()
        if not part:
            continue
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = int(step_text)
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1, step))
        else:
            out.append(int(part))
    return out


# -- qstat output ---------------------------------------------------------------------------------------------
Record = Dict[str, str]


def parse_qstat_text(text: str) -> Dict[str, Record]:
    """``qstat -f`` text (Torque, and the Slurm-backed wrappers): job id -> flat ``{attribute: value}``."""
    jobs: Dict[str, Record] = {}
    current: Optional[Record] = None
    last_key = ""
    for line in text.splitlines():
        head = re.match(r"^Job Id:\s*(\S+)", line)
        if head:
            current = jobs.setdefault(head.group(1), {})
            last_key = ""
            continue
        if current is None:
            continue
        attr = re.match(r"^\s+([A-Za-z_][\w.]*) = (.*)$", line)
        if attr:
            last_key = attr.group(1)
            current[last_key] = attr.group(2).strip()
        elif line.strip() and last_key and line[:1] in ("\t", " "):
            current[last_key] += line.strip()  # a long value wrapped onto the next line
    return jobs


def _flatten(job: Mapping[str, object]) -> Record:
    flat: Record = {}
    for key, value in job.items():
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = _scalar(inner)
        else:
            flat[key] = _scalar(value)
    return flat


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return "" if value is None else str(value)


def parse_qstat_json(text: str) -> Dict[str, Record]:
    """``qstat -f -F json`` (PBS Pro): job id -> flat ``{attribute: value}`` (``Resource_List.walltime`` ...).

    PBS Pro has printed invalid JSON for some job environments (unescaped quotes and backslashes, numbers
    with leading zeros: openpbs#1255, #2541); then the output is read line by line, which its layout (one
    attribute per line) allows.
    """
    if not text.strip():
        return {}
    try:
        data = json.loads(text, strict=False)
    except ValueError:
        return _scan_qstat_json(text)
    jobs = data.get("Jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, dict):
        return {}
    return {str(jid): _flatten(job) for jid, job in jobs.items() if isinstance(job, dict)}


_JSON_PAIR = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*:\s*(.*?)\s*,?$')


def _scan_qstat_json(text: str) -> Dict[str, Record]:
    jobs: Dict[str, Record] = {}
    depth = 0
    in_jobs = False
    current: Optional[Record] = None
    prefix = ""
    for raw in text.splitlines():
        line = raw.strip()
        pair = _JSON_PAIR.match(line)
        if pair:
            key, value = pair.group(1), pair.group(2)
            if value == "{":
                if depth == 1:
                    in_jobs = key == "Jobs"
                elif depth == 2 and in_jobs:
                    current = jobs.setdefault(key, {})
                elif depth == 3:
                    prefix = f"{key}."
                depth += 1
            elif current is not None and depth in (3, 4):
                current[(prefix if depth == 4 else "") + key] = _json_value(value)
            continue
        if line.startswith("{"):
            depth += 1
        elif line.startswith("}"):
            depth -= 1
            if depth <= 3:
                prefix = ""
            if depth <= 2:
                current = None
    return jobs


def _json_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


# -- the adapter ----------------------------------------------------------------------------------------------
class _BareArray:
    """An array whose qsub printed a plain id: its tasks are followed as one group."""

    def __init__(self) -> None:
        self.indices: Set[int] = set()
        #: (Job_Name, Job_Owner, qtime) of the array's own record: its split-off tasks share them
        self.key: Optional[Tuple[str, str, str]] = None


class PBSScheduler(Scheduler):
    """PBS Pro / OpenPBS or Torque through their command-line tools."""

    name = "pbs"
    template = "pbs.sh.j2"

    def __init__(self, flavour: str = "pbspro") -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"PBS flavour {flavour!r}: use one of {', '.join(FLAVOURS)}")
        self.flavour = flavour
        self.states = PBSPRO_STATES if flavour == "pbspro" else TORQUE_STATES
        self.exit_names = PBSPRO_EXIT if flavour == "pbspro" else TORQUE_EXIT
        #: shell expression giving the task index; Torque-compatible layers over Slurm set no PBS_* variables
        self.task_index_expr = (
            "${PBS_ARRAY_INDEX:-0}" if flavour == "pbspro" else "${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}"
        )
        self._lock = threading.Lock()
        self._bare: Dict[str, _BareArray] = {}
        self._queried: Set[str] = set()
        self._unknown_answer = False  # the last qstat exited non-zero because (some) jobs are unknown
        self._arrays_seen: Set[str] = set()

    # -- submission -----------------------------------------------------------------------------------------
    def directives(self, req: ScriptRequest) -> List[str]:
        r = req.resources
        check_folder(req.folder)
        self._check(r, req.job_name)
        out = [f"-N {req.job_name}", f"-o {req.folder}/log/pbs.out", "-j oe"]
        if self.flavour == "pbspro":
            out += self._select(r)
        else:
            out += self._nodes(r)
        if r.walltime_s is not None:
            out.append(f"-l walltime={walltime_arg(r.walltime_s)}")
        if r.partition:
            out.append(f"-q {r.partition}")
        if r.account:
            out.append(f"-A {r.account}")
        n = req.ntasks_array
        if n is not None and (n > 1 or self.flavour == "torque"):
            spec = f"0-{n - 1}" + (f"%{r.array_parallelism}" if r.array_parallelism else "")
            if self.flavour == "pbspro":
                # a one-task range (0-0) is "illegal -J value" on PBS Pro: such arrays go as plain jobs
                out += [f"-J {spec}", "-r y"]  # sites whose default Rerunable is False refuse arrays without -r y
            else:
                out.append(f"-t {spec}")
        if r.after:
            out += self._depend(r.after)
        out.extend(r.extra_directives)
        return out

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
                    f"after: {job_id} is one task of the array {_array_key(job_id)}: PBS waits only for whole jobs "
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
        return ["qsub", *fg, "-j", "oe", "-o", f"{folder}/log/pbs.out", script_path]

    def parse_submit(self, stdout: str) -> str:
        for line in reversed(stdout.strip().splitlines()):
            token = line.strip()
            if _JOB_ID.match(token):
                return token
        raise SchedulerError(f"qsub printed no job id: {stdout.strip()!r}")

    def find_by_tag_argv(self, tag: str) -> List[str]:
        """Every job qstat knows, with its attributes (PBS Pro: finished ones too, while history is kept).

        Used after a connection dropped while ``qsub`` ran, to find the job instead of submitting it twice. A job
        carries its submission's tag in its folder, hence in its ``Output_Path`` (``-o <folder>/log/pbs.out``).
        """
        if self.flavour == "pbspro":
            return ["qstat", "-f", "-F", "json", "-x"]
        return ["qstat", "-f"]

    def parse_find_by_tag(self, stdout: str, tag: str) -> Optional[str]:
        """The id of the job whose ``Output_Path`` is ``<root>/TAG/log/pbs.out`` (an array's own id), or None.

        Raises :class:`ConnectionLostError` when qstat lists jobs but shows no ``Output_Path`` for any of them
        (the Slurm-backed wrappers print only a few attributes): then whether the job exists cannot be told, and
        submitting it again could run it twice.
        """
        records = parse_qstat_json(stdout) if self.flavour == "pbspro" else parse_qstat_text(stdout)
        suffix = f"/{tag}/log/pbs.out"
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
                f"twice): look for a job writing to .../{tag}/log/pbs.out, its folder is kept",
                maybe_ran=True,
            )
        return None

    def find_by_tag_hint(self, tag: str) -> str:
        """Where a user looks for the job themselves."""
        return f"its output goes to .../{tag}/log/pbs.out: see `qstat -f` (Output_Path)"

    def task_id(self, job_id: str, index: int, is_array: bool) -> str:
        if not is_array:
            return job_id
        if "[]" in job_id:
            return job_id.replace("[]", f"[{index}]", 1)
        if self.flavour == "torque" and job_id.isdigit():
            with self._lock:
                self._bare.setdefault(job_id, _BareArray()).indices.add(index)
            return f"{job_id}[{index}]"
        return job_id  # PBS Pro: a one-task array was submitted as a plain job

    # -- status ---------------------------------------------------------------------------------------------
    def status_argv(self, job_ids: Sequence[str], since_epoch: float) -> List[str]:
        with self._lock:
            self._queried = set(job_ids)
            self._unknown_answer = False
            bare = any(j in self._bare for j in job_ids)
        if self.flavour == "pbspro":
            return ["qstat", "-f", "-F", "json", "-x", "-t", *job_ids]
        if bare:
            # a bare array's started tasks are listed under ids nobody told us: ask for every job
            return ["qstat", "-f"]
        return ["qstat", "-f", *(["-t"] if any("[]" in j for j in job_ids) else []), *job_ids]

    def status_exit_ok(self, returncode: int, stderr: str) -> bool:
        """Whether a qstat that exited non-zero still answered: it does so when some jobs are unknown."""
        lines = [line for line in stderr.splitlines() if line.strip()]
        if lines:
            ok = all(_UNKNOWN_JOB_LINE.search(line) for line in lines)
        else:
            ok = returncode == EXIT_UNKNOWN_JOB  # the Slurm-backed qstat: none of the jobs, silently
        self._unknown_answer = ok
        return ok

    def status_failed(self, returncode: int, stderr: str) -> Tuple[StatusFailure, str]:
        return (StatusFailure.ANSWERED if self.status_exit_ok(returncode, stderr) else StatusFailure.RETRY), ""

    def parse_status(self, stdout: str) -> Dict[str, NativeStatus]:
        records = parse_qstat_json(stdout) if self.flavour == "pbspro" else parse_qstat_text(stdout)
        if not records and not self._unknown_answer:
            # qstat exits 0 only when it found the jobs: an empty answer is a broken one, not "all gone"
            raise SchedulerError(f"qstat reported no job and no error: {stdout.strip()[:300]!r}")
        out: Dict[str, NativeStatus] = {}
        arrays: Set[str] = set()
        for job_id, rec in records.items():
            out[job_id] = self.record_status(job_id, rec)
            if "[" in job_id:
                arrays.add(_array_key(job_id))
        for job_id, rec in records.items():
            if job_id.count("[]") == 1:
                self._expand_parent(job_id, rec, out)
        with self._lock:
            self._arrays_seen = arrays
            bare = [(b, g) for b, g in self._bare.items() if b in self._queried]
        for base, group in bare:
            self._bare_group(base, group, records, out)
        return out

    def missing_status(self, task_id: str) -> Optional[NativeStatus]:
        """The status of a task a successful query did not list: gone, so finished with an unknown exit status.

        None (no news) for a task of an array of which something is still listed (PBS may not have made its
        subjob yet), and for the tasks of bare arrays, which only their group says anything about.
        """
        if _BARE_TASK.match(task_id):
            return None
        if "[" in task_id:
            with self._lock:
                if _array_key(task_id) in self._arrays_seen:
                    return None
        return NativeStatus(
            task_id,
            JobState.COMPLETED,
            "gone from qstat (it finished; its exit status is no longer kept)",
        )

    def record_status(self, job_id: str, rec: Mapping[str, str]) -> NativeStatus:
        """One qstat record -> a status, with the final state read from the exit status."""
        code = rec.get("job_state", "").strip()
        exit_text = (rec.get("Exit_status") or rec.get("exit_status") or "").strip()
        exit_code = int(exit_text) if re.fullmatch(r"-?\d+", exit_text) else None
        nodes = rec.get("exec_host", "")
        reason = rec.get("comment", "")
        if code in FINAL_CODES[self.flavour]:
            state, why = self._final_state(rec, exit_code)
            native = code + (f" Exit_status={exit_code}" if exit_code is not None else "") + (f" {why}" if why else "")
            return NativeStatus(job_id, state, native, exit_code, reason, nodes)
        return NativeStatus(job_id, self.states.get(code, JobState.UNKNOWN), code or "?", exit_code, reason, nodes)

    def _final_state(self, rec: Mapping[str, str], exit_code: Optional[int]) -> Tuple[JobState, str]:
        if self.flavour == "pbspro" and rec.get("substate", "").strip() == SUBSTATE_TERMINATED:
            return JobState.CANCELLED, "(deleted)"
        if exit_code is None:
            if self.flavour == "pbspro" and rec.get("job_state") == "F":
                return JobState.CANCELLED, "(finished without running: deleted while queued)"
            return JobState.COMPLETED, "(exit status not reported)"
        if exit_code == 0:
            return JobState.COMPLETED, ""
        if exit_code < 0:
            name, state = self.exit_names.get(exit_code, ("", JobState.FAILED))
            return state, name
        if exit_code > SIGNAL_BASE:
            sig = exit_code - SIGNAL_BASE
            what = f"killed by signal {sig}" + (f" ({_SIGNALS[sig]})" if sig in _SIGNALS else "")
            used = _seconds(rec.get("resources_used.walltime", ""))
            limit = _seconds(rec.get("Resource_List.walltime", ""))
            if used is not None and limit is not None and used >= limit:
                return JobState.TIMEOUT, f"({what}: walltime {used} s reached the limit {limit} s)"
            if self.flavour == "torque":
                return JobState.CANCELLED, f"({what})"  # qdel sends SIGTERM, then SIGKILL
            return JobState.FAILED, f"({what})"  # PBS Pro marks deletions with substate 91 (above)
        return JobState.FAILED, ""

    def _expand_parent(self, job_id: str, rec: Mapping[str, str], out: Dict[str, NativeStatus]) -> None:
        """Statuses for the subjobs of array ``job_id`` that qstat did not list one by one."""
        submitted = rec.get("array_indices_submitted") or rec.get("job_array_request") or ""
        remaining_text = rec.get("array_indices_remaining")
        try:
            indices = expand_range(submitted)
            remaining = None if remaining_text is None else set(expand_range(remaining_text))
        except ValueError:
            return
        parent = out[job_id]
        for index in indices:
            task = job_id.replace("[]", f"[{index}]", 1)
            if task in out:
                continue
            if parent.state.is_final:
                out[task] = NativeStatus(task, JobState.COMPLETED, f"{parent.native} (array ended; subjob not listed)")
            elif remaining is None or index in remaining:
                out[task] = NativeStatus(task, JobState.PENDING, "Q (subjob not started)", None, parent.reason)
            else:
                out[task] = NativeStatus(task, JobState.RUNNING, f"{parent.native} (array)", None, parent.reason)

    def _bare_group(
        self, base: str, group: _BareArray, records: Mapping[str, Record], out: Dict[str, NativeStatus]
    ) -> None:
        own = records.get(base)
        if own is not None:
            group.key = (own.get("Job_Name", ""), own.get("Job_Owner", ""), own.get("qtime", ""))
        members = []
        if group.key is not None:
            for job_id, rec in records.items():
                if job_id.isdigit() and int(job_id) >= int(base) and _group_key(rec) == group.key:
                    members.append(rec.get("job_state", ""))
        running = sum(code in ("R", "E", "S") for code in members)
        queued = sum(code in ("Q", "H", "W", "T") for code in members)
        if running:
            state, native = JobState.RUNNING, f"R (array {base}: {running} running, {queued} queued)"
        elif queued:
            state, native = JobState.PENDING, f"Q (array {base}: {queued} queued)"
        else:
            state, native = JobState.COMPLETED, f"C (every task of array {base} has ended; exit status not reported)"
        for index in sorted(group.indices):
            task = f"{base}[{index}]"
            out[task] = NativeStatus(task, state, native)

    # -- cancel ---------------------------------------------------------------------------------------------
    def cancel_argv(self, job_ids: Sequence[str]) -> List[str]:
        bare = [j for j in job_ids if _BARE_TASK.match(j)]
        if bare:
            base = bare[0].split("[", 1)[0]
            raise SchedulerError(
                f"cannot cancel {', '.join(bare)} on its own: this site's qsub printed the plain id {base} for "
                f"the array, so its qdel knows only the whole array (qdel {bare[0]} would cancel every task). "
                "Cancel all of its unfinished jobs together (executor.shutdown(cancel_futures=True), or stop "
                "reading a map's results), or submit calls you may cancel alone as separate jobs."
            )
        return ["qdel", *job_ids]


def check_folder(folder: str) -> None:
    """Job folders appear in ``-o`` paths and ``#PBS`` lines: no spaces, quotes, colons or shell characters."""
    if not _SAFE_PATH.match(folder):
        raise ResourceError(
            f"the job folder {folder!r} cannot be given to PBS (-o paths take no spaces, quotes, ':' or shell "
            "characters); choose a workdir (site-config) or folder= of letters, digits and / . _ + -"
        )


def _array_key(job_id: str) -> str:
    """``'123[4].srv'`` and ``'123[].srv'`` -> ``'123[].srv'``."""
    return re.sub(r"\[\d*\]", "[]", job_id, count=1)


def _group_key(rec: Mapping[str, str]) -> Tuple[str, str, str]:
    return (rec.get("Job_Name", ""), rec.get("Job_Owner", ""), rec.get("qtime", ""))
