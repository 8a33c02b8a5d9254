"""The scheduler adapter seam: pure functions from requests to argv, and from output to states."""

from __future__ import annotations

import abc
import dataclasses
import enum
import re
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Protocol, Sequence, Tuple

from ..errors import ResourceError
from ..spec import RESOURCE_NAMES, Resources
from ..state import JobState
from ..usage import Measured


@dataclasses.dataclass(frozen=True)
class NativeStatus:
    """One job's (or array task's) state as the scheduler reported it."""

    job_id: str
    state: JobState
    native: str
    exit_code: Optional[int] = None
    reason: str = ""
    nodes: str = ""
    #: a waiting job's estimated start as the scheduler prints it (Slurm's ISO local time), "" when it gives none
    start_estimate: str = ""


@dataclasses.dataclass(frozen=True)
class ScriptRequest:
    """Everything an adapter needs to write a job's directives."""

    resources: Resources
    folder: str
    job_name: str
    tag: str
    array_size: Optional[int]  # None: a plain job; N: an array of N tasks (0..N-1)
    workdir: Optional[str] = None
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)


class SiteConfig(Protocol):
    """What an adapter reads of a site-config (:class:`hpcbridge.sites.Site` has it); declared here so that the
    adapters do not import the site layer."""

    @property
    def name(self) -> str: ...
    @property
    def scheduler(self) -> str: ...
    @property
    def python(self) -> str: ...
    @property
    def accounting(self) -> bool: ...
    @property
    def flavour(self) -> str: ...
    @property
    def local_parallel(self) -> int: ...
    @property
    def slurm(self) -> Mapping[str, Any]: ...


class Output(Protocol):
    """A command's outcome as a parser reads it (:class:`hpcbridge.transport.base.Completed` is one)."""

    @property
    def returncode(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class ClusterFacts:
    """What the backend has learned about its cluster from the scheduler's answers.

    Adapters keep no state between calls: they read these in each query and return what they learn in a
    :class:`StatusAnswer`; the backend holds the current facts and hands them back.
    """

    #: whether the cluster keeps finished jobs' records (Slurm: sacct answers, False once the scheduler said it does
    #: not; PBS Pro: job history, ``qstat -x``), as the site-config's ``accounting`` says at first
    accounting: bool = True
    #: bare arrays of the Torque-compatible wrappers: array id -> (Job_Name, Job_Owner, qtime) of its own record,
    #: which its split-off tasks share (kept because the array's own record leaves qstat before its tasks do)
    bare_array_keys: Mapping[str, Tuple[str, str, str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StatusQuery:
    """One status command and what it asks; :meth:`Scheduler.parse_status` reads the answer in its light."""

    argv: List[str]
    job_ids: Tuple[str, ...]
    #: the facts the command was chosen under
    facts: ClusterFacts
    #: the array submissions among ``job_ids`` -> their number of tasks
    arrays: Mapping[str, int] = dataclasses.field(default_factory=dict)


class Verdict(enum.Enum):
    """What a status command's outcome means."""

    #: the statuses are the answer (an empty one: the scheduler lists none of the jobs; missing_statuses decides)
    ANSWERED = "answered"
    #: the query failed (controller down, timeout): ask again on the back-off; no job is marked anything
    RETRY = "retry"
    #: the answer taught a fact that changes the query (accounting is off): ask again at once
    ASK_AGAIN = "ask-again"


@dataclasses.dataclass(frozen=True)
class StatusAnswer:
    """A status command's outcome as data: task id -> status, the verdict, a note for the user's log, new facts."""

    verdict: Verdict
    statuses: Mapping[str, NativeStatus] = dataclasses.field(default_factory=dict)
    #: for the user's log ("" for none)
    note: str = ""
    #: the cluster's facts after this answer, when it taught something (None: nothing new)
    facts: Optional[ClusterFacts] = None


class Scheduler(abc.ABC):
    """What the executor needs from a batch system: argv builders and parsers, functions of their inputs only.

    The abstract methods are the whole contract for a simple batch system (the ``local`` site's); the others
    have defaults that an adapter overrides for what its scheduler can do: run a submission again that never
    reached it, find a job by its tag, tell a failed query from a partial answer, and give news of a task the
    status answer no longer lists. The class attributes say what differs between schedulers elsewhere
    (flavours, launchers, ``after=``, the environment scrubbed at submission, the commands safe to retry over SSH).
    """

    name: str
    template: str
    #: shell expression giving the array task index inside a job (0 for plain jobs)
    task_index_expr: str
    #: stderr fragments of a command that never reached the scheduler: running it again is safe
    not_sent_errors: Tuple[str, ...] = ()
    #: the variants a site-config's ``flavour`` may name (none: ``flavour`` is refused for this scheduler)
    flavours: Tuple[str, ...] = ()
    #: whether jobs can wait for others (``after=``)
    supports_after: bool = False
    #: the launchers its jobs can run (``launcher=``)
    launchers: Tuple[str, ...] = ("mpirun", "torchrun")
    #: the launcher that starts one process per node (torchrun's agents): "srun", "mpirun", or None (one machine)
    per_node_launcher: Optional[str] = None
    #: whether mpirun is given the allocation's node file (``{nodefile}``, filled in inside the job)
    hostfile: bool = False
    #: whether every job runs on this one machine (nodes=1 only)
    one_machine: bool = False
    #: the resources (Executor keywords) its jobs can be given; another one set to anything but its default is
    #: refused before anything is submitted (:meth:`check_resources`), with its reason in ``why_not``
    supported_resources: FrozenSet[str] = frozenset(RESOURCE_NAMES)
    #: resource -> why its jobs cannot be given it, and what to do instead (the end of the error message)
    why_not: Mapping[str, str] = {}
    #: prefixes of the variables an enclosing job of this scheduler sets: never passed on to a new submission
    scrub_prefixes: Tuple[str, ...] = ()
    #: its commands without side effects: safe to run again after a dropped connection
    safe_commands: FrozenSet[str] = frozenset()
    #: requeue on (docs/requeue.md): the template partial that runs the job's command under the warning trap and
    #: requeues it (None: ``requeue`` must not be in :attr:`supported_resources`)
    requeue_template: Optional[str] = None
    #: requeue on: a warned run hands over to a follow-up job with another id (PBS, :mod:`hpcbridge.chain`) instead
    #: of being requeued under its own id (Slurm)
    requeue_by_follow_up: bool = False

    @classmethod
    @abc.abstractmethod
    def from_site(cls, site: SiteConfig, root: str) -> Scheduler:
        """The adapter for ``site``, whose job folders are under ``root``."""

    @classmethod
    def default_launcher(cls, res: Resources) -> Optional[str]:
        """The launcher of a job whose launcher was not chosen (None: the callable runs once)."""
        return None

    @classmethod
    def check_resources(cls, res: Resources) -> None:
        """Raise :class:`ResourceError` for a resource its jobs cannot be given: more than one node on a one-machine
        site, or one outside :attr:`supported_resources` that is set (its value is not the default)."""
        if cls.one_machine and res.nodes > 1:
            raise ResourceError(
                f"nodes={res.nodes}: the {cls.name} site is one machine; use nodes=1, or a cluster site for more"
            )
        blank = Resources()
        for key in RESOURCE_NAMES:
            field = "walltime_s" if key == "walltime" else key
            value = getattr(res, field)
            if key in cls.supported_resources or value == getattr(blank, field):
                continue
            shown = res.walltime_hms if key == "walltime" else list(value) if isinstance(value, tuple) else value
            why = cls.why_not.get(key, f"the {cls.name} scheduler cannot give it; drop it")
            raise ResourceError(f"{key}={shown!r}: {why}")

    def confirm_end_argv(self, status: NativeStatus, facts: ClusterFacts) -> Optional[List[str]]:
        """A command that says whether a job reported in this final state will still run again (a requeue the
        scheduler does itself: preemption, node failure), or None when the state is the end (the default)."""
        return None

    def attempts_argv(self, task_id: str, facts: ClusterFacts) -> Optional[List[str]]:
        """A command listing every run of a task (requeue on, docs/requeue.md), or None: not known."""
        return None

    def parse_attempts(self, stdout: str) -> List[Tuple[str, str, str, str]]:
        """``(native state, nodes, start, end)`` of each run, oldest first, from :meth:`attempts_argv`'s output."""
        return []

    def parse_attempt_costs(self, stdout: str) -> List[Tuple[Optional[float], Optional[int]]]:
        """``(elapsed seconds, allocated CPUs)`` of each run, in :meth:`parse_attempts`' order (None: unknown)."""
        return []

    def initial_facts(self) -> ClusterFacts:
        """The facts to start from (what the site-config says), before any answer."""
        return ClusterFacts()

    @abc.abstractmethod
    def directives(self, req: ScriptRequest) -> List[str]:
        """Option strings written as directives at the top of the batch script."""

    @abc.abstractmethod
    def submit_argv(self, script_path: str) -> List[str]:
        """Command that submits the script and prints the job id."""

    @abc.abstractmethod
    def parse_submit(self, stdout: str) -> str:
        """The job id from the submit command's output."""

    def task_id(self, job_id: str, index: int, is_array: bool) -> str:
        """The id under which the scheduler reports task ``index`` of a submission (default: Slurm's ``123_4``)."""
        return f"{job_id}_{index}" if is_array else job_id

    @abc.abstractmethod
    def status_query(
        self,
        job_ids: Sequence[str],
        since_epoch: float,
        now_epoch: float,
        facts: ClusterFacts,
        arrays: Optional[Mapping[str, int]] = None,
    ) -> StatusQuery:
        """One command that reports every given job (submission ids, not task ids), and what it asks.

        ``since_epoch``: the oldest submission's time; ``now_epoch``: the client's clock; ``arrays``: the array
        submissions among ``job_ids`` and their sizes.
        """

    @abc.abstractmethod
    def parse_status(self, query: StatusQuery, out: Output) -> StatusAnswer:
        """The status command's outcome: task id -> status for every job it lists, or why there is none."""

    @abc.abstractmethod
    def cancel_argv(self, job_ids: Sequence[str]) -> List[str]:
        """Command that cancels jobs or array tasks."""

    # -- optional -----------------------------------------------------------------------------------------
    def find_by_tag_argv(self, tag: str) -> Optional[List[str]]:
        """A command listing the user's jobs with their tags, to find a submission whose outcome is unknown
        (the connection dropped or the command hung after it was sent). None: jobs cannot be found, so the
        error stands and the job's folder is kept."""
        return None

    def parse_find_by_tag(self, stdout: str, tag: str) -> Optional[str]:
        """The id of the job tagged ``hpcbridge:TAG`` in :meth:`find_by_tag_argv`'s output, or None."""
        return None

    def find_by_tag_hint(self, tag: str) -> str:
        """How a user finds the job tagged ``TAG`` themselves (ends the sentence "the job, if submitted, ...")."""
        return f"carries the tag hpcbridge:{tag}"

    def waiting_status_query(
        self, job_ids: Sequence[str], facts: ClusterFacts, arrays: Optional[Mapping[str, int]] = None
    ) -> Optional[StatusQuery]:
        """The status command to use instead of :meth:`status_query` while every job asked about waits in the queue,
        when it tells more about waiting jobs (the queue's reason, the estimated start); read by
        :meth:`parse_status`. None (the default): :meth:`status_query` serves."""
        return None

    @classmethod
    def time_left_argv(cls, job_id: str) -> Optional[List[str]]:
        """A command that tells how long the running job ``job_id`` has left (the allocation a notebook runs in,
        :mod:`hpcbridge.here`), run at most once per process; None (the default): the scheduler cannot say."""
        return None

    @classmethod
    def parse_time_left(cls, stdout: str) -> Optional[int]:
        """Seconds left in :meth:`time_left_argv`'s output; None when it names no limit or cannot be read."""
        return None

    def missing_statuses(
        self, statuses: Mapping[str, NativeStatus], task_ids: Sequence[str]
    ) -> Dict[str, NativeStatus]:
        """News of live tasks that a successful status answer (``statuses``) did not list; none by default."""
        return {}

    def show_job_argv(self, task_id: str, facts: ClusterFacts) -> Optional[List[str]]:
        """A per-task command for a task the status answer did not list (tried when missing_statuses has no news).
        None: there is none."""
        return None

    def parse_show_job(self, task_id: str, stdout: str) -> Optional[NativeStatus]:
        """The status in :meth:`show_job_argv`'s output, or None."""
        return None

    def show_job_failed(self, task_id: str, returncode: int, stderr: str) -> Optional[NativeStatus]:
        """News in a failed :meth:`show_job_argv` command: the scheduler says the task no longer exists.
        None (the default): no news, ask again later (the controller may be restarting)."""
        return None

    def cancelled_for_dependency(self, status: NativeStatus) -> bool:
        """Whether a CANCELLED job that waited for others and never started was removed by the scheduler because
        its dependency can no longer be met (not by a user). Default: unless the state names who cancelled it."""
        return " by " not in status.native

    def explain_end(self, status: NativeStatus, stderr_tail: str) -> NativeStatus:
        """The final status of a task that wrote no result, in the light of its stderr's last lines: for a kill
        that the scheduler reports under another state. Default: the status as it is."""
        return status

    def lookup_queries(self, job_ids: Sequence[str], facts: ClusterFacts) -> List[List[str]]:
        """Commands that list jobs named by id (``after=``), asked in turn until every id is found: the first asks
        what the scheduler holds now (it waits for those and handles their outcome itself), the later ones its
        record of jobs that ended and that it no longer holds. Empty (the default): ids cannot be looked up, and
        are not checked."""
        return []

    def parse_lookup(self, job_ids: Sequence[str], out: Output) -> Optional[Dict[str, JobState]]:
        """Which of ``job_ids`` a :meth:`lookup_queries` command's output lists, with the state of each (an
        array's: a live task's state while one runs, else the first that did not complete, else COMPLETED).
        None: the command failed, nothing can be told."""
        return None


    # -- usage of finished jobs (docs/usage.md) ------------------------------------------------------------------
    def usage_argv(
        self, job_ids: Sequence[str], since_epoch: float, now_epoch: float, facts: ClusterFacts
    ) -> Optional[List[str]]:
        """One command for the figures of the finished jobs ``job_ids`` (an array's id: all its tasks), run by the
        poller once per tick for the jobs that newly finished; None: the scheduler says nothing (the sampler
        does)."""
        return None

    def parse_usage(self, out: Output, facts: ClusterFacts) -> Dict[str, Tuple[Measured, bool]]:
        """task id -> (its figures, complete: final, nothing more to come); a task not listed: no news yet."""
        return {}

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
