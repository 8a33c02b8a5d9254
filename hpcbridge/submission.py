"""Submission: one scheduler job (plain or array), the calls it carries, and how its tasks resolve.

The poller feeds it result payloads and scheduler statuses (under the backend's lock); it decides when a task is
over and sets the futures, with the values and errors that :mod:`hpcbridge.outcome` makes.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, List, Optional, Protocol, Sequence, Set, Tuple

from . import attempts, chain, outcome
from .job import Job, mark_cancelled
from .schedulers.base import NativeStatus, Scheduler
from .sites import Site
from .state import Attempt, JobState
from .store import JobFolder
from .transport.base import Completed, Transport
from .usage import Usage

log = logging.getLogger("hpcbridge")


class SubmissionHost(Protocol):
    """What a submission needs of its site at run time (:class:`hpcbridge.backend.Backend` is one)."""

    site: Site
    scheduler: Scheduler
    transport: Transport
    #: guards every submission's resolution state (shared with the poller)
    lock: threading.RLock

    def run_checked(self, argv: Sequence[str], what: str) -> Completed: ...

    def note_final(self, job: Job) -> None: ...

    def attempts(self, task_id: str, folder: str, task: int, last: Optional[str] = None) -> List[Attempt]: ...

    def save_attempts(self, jobs: Sequence[Job]) -> None: ...

    def flush_states(self) -> None: ...

    def usage_of(self, sub: Submission, tasks: Sequence[int]) -> Dict[int, Usage]: ...


class Submission:
    """One scheduler job (plain or array) and the calls it carries."""

    def __init__(
        self,
        backend: SubmissionHost,
        *,
        tag: str,
        folder: str,
        script: str,
        chunks: List[int],
        is_array: bool,
        ranks: int,
        submit_time: float,
        job_id: str = "",
    ) -> None:
        self.backend = backend
        self.site = backend.site.name
        self.tag = tag
        self.folder = folder
        self.paths = JobFolder(folder)
        self.script = script
        self.chunks = chunks
        self.is_array = is_array
        self.ranks = ranks
        self.submit_time = submit_time
        self.job_id = job_id
        self.jobs: List[List[Job]] = [[Job(self, t, p) for p in range(n)] for t, n in enumerate(chunks)]
        self.payloads: Dict[int, outcome.Payloads] = {}
        self.seen: Set[str] = set()
        self.resolved: Set[int] = set()
        #: resolved tasks handed to the poller's usage gatherer
        self.usage_wanted: Set[int] = set()
        self.final_at: Dict[int, Tuple[NativeStatus, float]] = {}
        #: the job ids it waits for (``after=``): a cancellation before it started is blamed on them
        self.after: Tuple[str, ...] = ()
        #: requeue on (docs/requeue.md): how many restarts its tasks may have; their runs are read when they end
        self.requeue = 0
        #: requeue by follow-up jobs (PBS, :mod:`hpcbridge.chain`): the ids of the jobs that continued this one, and
        #: the runs' notes read so far (run -> note); whether a cancel is under way
        self.follow_ups: List[str] = []
        self.link_notes: Dict[int, chain.LinkNote] = {}
        self.cancelling = False

    @property
    def all_jobs(self) -> List[Job]:
        return [j for task in self.jobs for j in task]

    def task_id(self, task: int) -> str:
        if not self.job_id:
            return "(not submitted)"
        return self.backend.scheduler.task_id(self.job_id, task, self.is_array)

    @property
    def chained(self) -> bool:
        """Whether a warned run continues in a follow-up job with another id (PBS requeue, :mod:`hpcbridge.chain`)."""
        return bool(self.requeue) and self.backend.scheduler.requeue_by_follow_up

    @property
    def query_id(self) -> str:
        """The id the scheduler is asked about: the job's, or the follow-up job's that continues it now."""
        return chain.live_id(self)

    def live_task_id(self, task: int) -> str:
        """:meth:`task_id` under the id the scheduler reports the task's live run by (:attr:`query_id`)."""
        if not self.follow_ups:
            return self.task_id(task)
        return self.backend.scheduler.task_id(self.query_id, task, self.is_array)

    def live_tasks(self) -> List[int]:
        return [t for t in range(len(self.chunks)) if t not in self.resolved]

    def read_log(self, task: int, kind: str, max_bytes: int) -> str:
        data = self.backend.transport.read_tail(self.paths.log(task, kind), max_bytes)
        return "" if data is None else data.decode("utf-8", "replace")

    def usage_of(self, tasks: List[int]) -> Dict[int, Usage]:
        """The usage of finished ``tasks`` (``job.usage()``), gathered now if the poller has not yet."""
        return self.backend.usage_of(self, tasks)

    # -- cancel -------------------------------------------------------------------------------------------
    def cancel_tasks(self, tasks: List[int]) -> bool:
        """Cancel tasks on the cluster; True if any was still live."""
        with self.backend.lock:
            live = [t for t in tasks if t not in self.resolved]
            # every unfinished task: cancel by the submission's id (the Slurm-backed PBS qdel knows no others)
            all_left = set(live) == set(self.live_tasks())
        if not live or not self.job_id:
            return False
        if self.chained:  # no follow-up job after the cancel (docs/requeue.md)
            chain.before_cancel(self)
        if len(live) == len(self.chunks) or all_left:
            ids = [self.query_id]
        else:
            ids = [self.live_task_id(t) for t in live]
        try:
            self.backend.run_checked(self.backend.scheduler.cancel_argv(ids), "cancel the job")
        except Exception:
            if not self.chained:
                raise
            # the link may have ended by handing over just now: then its follow-up is what is cancelled
            follow_up = chain.after_cancel(self, live[0])
            if not follow_up:
                chain.cancel_failed(self)  # the job goes on as if never cancelled
                raise
        else:
            follow_up = chain.after_cancel(self, live[0]) if self.chained else []
        if follow_up:  # submitted by the run before it saw the mark
            self.backend.run_checked(self.backend.scheduler.cancel_argv(follow_up), "cancel the follow-up job")
        marked = False
        with self.backend.lock:
            for t in live:
                if t in self.resolved:  # the poller delivered it while scancel ran: not cancelled after all
                    continue
                self.resolved.add(t)
                self.payloads.pop(t, None)
                for job in self.jobs[t]:
                    if mark_cancelled(job):
                        job.state = JobState.CANCELLED
                        job.native_state = "CANCELLED"
                        self.backend.note_final(job)
                        marked = True
        self.backend.flush_states()
        return marked

    # -- resolution ---------------------------------------------------------------------------------------
    def add_payload(self, task: int, rank: int, payload: Any) -> None:
        self.payloads.setdefault(task, {})[rank] = payload

    def try_resolve(self, task: int, now: float) -> bool:
        """Resolve a task's jobs when its results are complete, or when the scheduler says it is over.

        Runs under the backend's lock. A task is marked resolved before any of its futures is set, so a failure
        half-way (a log that cannot be read) never sets a future twice.
        """
        if task in self.resolved:
            return False
        got = self.payloads.get(task, {})
        final = self.final_at.get(task)
        status: Optional[NativeStatus] = None
        tail: Optional[str] = None
        if len(got) < self.ranks and not outcome.any_error(got):
            # a failed rank fails the task at once: the launchers end the other ranks (srun
            # --kill-on-bad-exit, mpirun's abort, torchrun's group teardown), which may never write a result
            if final is None:
                return False
            status, since = final
            if self.chained:  # requeue on PBS: a warned run continues in the follow-up job its note names
                ended = chain.follow(self, task, status)
                if ended is None:
                    self.final_at.pop(task, None)
                    return False
                status = ended
            if status.state not in outcome.KILLED and now - since < self.backend.site.result_grace_s:
                return False  # give every rank's result file time to show on the shared FS
            got = self._read_missing_results(task)
            if len(got) < self.ranks and not outcome.any_error(got):
                tail = self._stderr_tail(task)
                # a kill the scheduler reports under another state (Slurm without cgroups: a memory kill is FAILED)
                status = self.backend.scheduler.explain_end(status, tail)
                if status.state in outcome.KILLED:
                    got = {}  # the scheduler's kill is the story, not the ranks that happened to finish first
        self.resolved.add(task)
        if tail is None:
            tail = self._stderr_tail(task)
        if self.requeue:  # every run of the task, before its futures resolve (the error names them)
            last = None if not got else "FAILED" if outcome.any_error(got) else "done"
            if self.chained:
                done = last or (status.native if status is not None else "Unknown")
                ran_on = {str(p.get("host", "")) for p in got.values() if isinstance(p, dict)} - {"", "?"}
                nodes = ",".join(sorted(ran_on)) or (status.nodes if status is not None else "")
                runs = chain.attempts_of(self, task, done, nodes)
            else:
                runs = self.backend.attempts(self.task_id(task), self.folder, task, last)
            for job in self.jobs[task]:
                job.attempts = runs
            self.backend.save_attempts(self.jobs[task])  # now: a CLI may exit as soon as the future is set
        if got:
            self._resolve_from_payloads(task, got, tail)  # ranks that wrote nothing fail there
        else:
            assert status is not None
            self._resolve_ended(task, status, tail)
        hosts = sorted({str(p.get("host", "")) for p in got.values() if isinstance(p, dict)} - {"", "?"})
        for job in self.jobs[task]:
            job.result_hosts = hosts
        self.payloads.pop(task, None)  # the futures hold the values now
        return True

    def _read_missing_results(self, task: int) -> outcome.Payloads:
        """Before declaring results lost, open them by name: a directory listing on NFS can lag the files."""
        got = self.payloads.setdefault(task, {})
        wanted = {self.paths.result(task, r): r for r in range(self.ranks) if r not in got}
        try:
            read = self.backend.transport.read_with_owners(list(wanted), [self.folder, self.paths.results_dir])
        except Exception as exc:
            log.warning("hpcbridge: could not re-read the results of %s: %s", self.task_id(task), exc)
            return got
        for path in read.files:
            self.seen.add(os.path.basename(path))
            got[wanted[path]] = outcome.checked_payload(self.paths, path, read, len(self.jobs[task]), wanted[path])
        return got

    def _stderr_tail(self, task: int) -> str:
        got = self.payloads.get(task, {})
        if len(got) >= self.ranks and not outcome.any_error(got):
            return ""  # every rank succeeded: no error will show it (one round trip per task saved, over SSH)
        try:
            return outcome.stderr_tail(self.read_log(task, "err", 64 * 1024))
        except Exception as exc:  # the tail is a courtesy: never let it stop a result from being delivered
            return f"(the job's stderr could not be read: {exc})"

    def _resolve_from_payloads(self, task: int, got: outcome.Payloads, tail: str) -> None:
        missing = [r for r in range(self.ranks) if r not in got]
        for pos, job in enumerate(self.jobs[task]):
            values, failure = outcome.split_outcomes(got, pos)
            if job.done():
                continue
            error: Optional[BaseException] = None
            if failure is None and missing:
                job.state = JobState.FAILED
                error = outcome.missing_ranks_error(job.job_id, job.native_state, job.state, missing, self.ranks, tail)
            elif failure is None:
                job.state = JobState.COMPLETED
                job._rank_values = values
            else:
                job.state = JobState.FAILED
                rank, payload, failed = failure
                error = outcome.remote_exception(job.job_id, rank, self.ranks, payload, failed, tail)
            # the state is noted for the registry before the future resolves (a caller may exit right after)
            self.backend.note_final(job)
            if error is None:
                job.set_result(values[0] if values else None)
            else:
                job.set_exception(error)

    def _resolve_ended(self, task: int, status: NativeStatus, tail: str) -> None:
        for_dependency = (
            status.state == JobState.CANCELLED
            and bool(self.after)
            and outcome.never_started(status)
            and self.backend.scheduler.cancelled_for_dependency(status)
        )
        for job in self.jobs[task]:
            if job.done():
                continue
            job.state = status.state
            job.native_state = status.native
            runs = attempts.describe(job.attempts) if len(job.attempts) > 1 else ""
            self.backend.note_final(job)
            job.set_exception(outcome.end_error(job.job_id, status, tail, self.after, for_dependency, runs))
