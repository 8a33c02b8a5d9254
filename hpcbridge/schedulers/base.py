"""The scheduler adapter seam: pure functions from requests to argv, and from output to states."""

from __future__ import annotations

import abc
import dataclasses
import enum
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

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


class StatusFailure(enum.Enum):
    """What a status command that exited non-zero means (:meth:`Scheduler.status_failed`)."""

    #: the query failed (controller down, timeout): ask again on the back-off; no job is marked anything
    RETRY = "retry"
    #: it still answered (qstat exits non-zero when some of the jobs are unknown): parse its output
    ANSWERED = "answered"
    #: none of the jobs is known any more (squeue forgot them all): an empty answer, missing_status decides
    NONE_KNOWN = "none-known"
    #: the adapter has changed its query (it found that accounting is off): ask again at once
    ASK_AGAIN = "ask-again"


class Scheduler(abc.ABC):
    """What the executor needs from a batch system. All methods are pure (argv builders and parsers), except
    that an adapter may learn about its cluster from answers (:meth:`status_failed`).

    The abstract methods are the whole contract for a simple batch system (the ``local`` site's); the others
    have defaults that an adapter overrides for what its scheduler can do: run a submission again that never
    reached it, find a job by its tag, tell a failed query from a partial answer, and give news of a task the
    status answer no longer lists.
    """

    name: str
    template: str
    #: shell expression giving the array task index inside a job (0 for plain jobs)
    task_index_expr: str
    #: stderr fragments of a command that never reached the scheduler: running it again is safe
    not_sent_errors: Tuple[str, ...] = ()

    @abc.abstractmethod
    def directives(self, req: ScriptRequest) -> List[str]:
        """Option strings written as directives at the top of the batch script."""

    @abc.abstractmethod
    def submit_argv(self, script_path: str) -> List[str]:
        """Command that submits the script and prints the job id."""

    @abc.abstractmethod
    def parse_submit(self, stdout: str) -> str:
        """The job id from the submit command's output."""

    @abc.abstractmethod
    def task_id(self, job_id: str, index: int, is_array: bool) -> str:
        """The id under which the scheduler reports task ``index`` of a submission."""

    @abc.abstractmethod
    def status_argv(self, job_ids: Sequence[str], since_epoch: float) -> List[str]:
        """One command that reports every given job (submission ids, not task ids)."""

    @abc.abstractmethod
    def parse_status(self, stdout: str) -> Dict[str, NativeStatus]:
        """Task id -> status, for every line of the status command's output."""

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

    def status_failed(self, returncode: int, stderr: str) -> Tuple[StatusFailure, str]:
        """What a status command that exited non-zero means, and a note for the user's log ("" for none)."""
        return StatusFailure.RETRY, ""

    def missing_status(self, task_id: str) -> Optional[NativeStatus]:
        """News of a live task that a successful status answer did not list; None: none yet."""
        return None

    def show_job_argv(self, task_id: str) -> Optional[List[str]]:
        """A per-task command for a task the status answer did not list (tried when missing_status has no news).
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
