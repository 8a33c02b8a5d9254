"""Status: result files as the fast path, one batched scheduler query per tick with back-off.

One :class:`Poller` per executor (shared by its ``with_resources`` copies) watches every live submission:
each tick lists each submission's ``res/`` folder (one directory read, no per-job stats) and, when the back-off
allows, asks the scheduler about all unfinished jobs in one command. A failed query is retried later and never
marks a job failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

import cloudpickle

from . import errors
from .job import Job, mark_cancelled
from .schedulers.base import NativeStatus, Scheduler
from .state import JobState
from .store import JobFolder, parse_result_name

if TYPE_CHECKING:  # pragma: no cover
    from .backend import Backend

log = logging.getLogger("hpcbridge")

_KILLED = {
    JobState.TIMEOUT: (errors.JobTimeoutError, "hit its walltime"),
    JobState.OUT_OF_MEMORY: (errors.JobOutOfMemoryError, "ran out of memory"),
    JobState.NODE_FAIL: (errors.JobNodeFailError, "lost a node"),
    JobState.PREEMPTED: (errors.JobPreemptedError, "was preempted"),
    JobState.CANCELLED: (errors.JobCancelledError, "was cancelled"),
}


class Submission:
    """One scheduler job (plain or array) and the calls it carries."""

    def __init__(
        self,
        backend: Backend,
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
        self.script = script
        self.chunks = chunks
        self.is_array = is_array
        self.ranks = ranks
        self.submit_time = submit_time
        self.job_id = job_id
        self.jobs: List[List[Job]] = [[Job(self, t, p) for p in range(n)] for t, n in enumerate(chunks)]
        self.payloads: Dict[int, Dict[int, Any]] = {}
        self.seen: Set[str] = set()
        self.resolved: Set[int] = set()
        self.final_at: Dict[int, Tuple[NativeStatus, float]] = {}
        #: the job ids it waits for (``after=``): a cancellation before it started is blamed on them
        self.after: Tuple[str, ...] = ()

    @property
    def all_jobs(self) -> List[Job]:
        return [j for task in self.jobs for j in task]

    def task_id(self, task: int) -> str:
        if not self.job_id:
            return "(not submitted)"
        return self.backend.scheduler.task_id(self.job_id, task, self.is_array)

    def live_tasks(self) -> List[int]:
        return [t for t in range(len(self.chunks)) if t not in self.resolved]

    def read_log(self, task: int, kind: str, max_bytes: int) -> str:
        data = self.backend.transport.read_tail(JobFolder(self.folder).log(task, kind), max_bytes)
        return "" if data is None else data.decode("utf-8", "replace")

    # -- cancel -------------------------------------------------------------------------------------------
    def cancel_task(self, task: int) -> bool:
        return self.cancel_tasks([task])

    def cancel_tasks(self, tasks: List[int]) -> bool:
        """Cancel tasks on the cluster; True if any was still live."""
        with self.backend.poller.lock:
            live = [t for t in tasks if t not in self.resolved]
            # every unfinished task: cancel by the submission's id (the Slurm-backed PBS qdel knows no others)
            all_left = set(live) == set(self.live_tasks())
        if not live or not self.job_id:
            return False
        if len(live) == len(self.chunks) or all_left:
            ids = [self.job_id]
        else:
            ids = [self.task_id(t) for t in live]
        self.backend.run_checked(self.backend.scheduler.cancel_argv(ids), "cancel the job")
        marked = False
        with self.backend.poller.lock:
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

        Runs under the poller's lock. A task is marked resolved before any of its futures is set, so a failure
        half-way (a log that cannot be read) never sets a future twice.
        """
        if task in self.resolved:
            return False
        got = self.payloads.get(task, {})
        final = self.final_at.get(task)
        status: Optional[NativeStatus] = None
        tail: Optional[str] = None
        if len(got) < self.ranks and not _any_error(got):
            # a failed rank fails the task at once: the launchers end the other ranks (srun
            # --kill-on-bad-exit, mpirun's abort, torchrun's group teardown), which may never write a result
            if final is None:
                return False
            status, since = final
            if status.state not in _KILLED and now - since < self.backend.site.result_grace_s:
                return False  # give every rank's result file time to show on the shared FS
            got = self._read_missing_results(task)
            if len(got) < self.ranks and not _any_error(got):
                tail = self._stderr_tail(task)
                # a kill the scheduler reports under another state (Slurm without cgroups: a memory kill is FAILED)
                status = self.backend.scheduler.explain_end(status, tail)
                if status.state in _KILLED:
                    got = {}  # the scheduler's kill is the story, not the ranks that happened to finish first
        self.resolved.add(task)
        if tail is None:
            tail = self._stderr_tail(task)
        if got:
            self._resolve_from_payloads(task, got, tail)  # ranks that wrote nothing fail there
        else:
            assert status is not None
            self._resolve_killed(task, status, tail)
        hosts = sorted({str(p.get("host", "")) for p in got.values() if isinstance(p, dict)} - {"", "?"})
        for job in self.jobs[task]:
            job.result_hosts = hosts
        self.payloads.pop(task, None)  # the futures hold the values now
        return True

    def _read_missing_results(self, task: int) -> Dict[int, Any]:
        """Before declaring results lost, open them by name: a directory listing on NFS can lag the files."""
        got = self.payloads.setdefault(task, {})
        paths = JobFolder(self.folder)
        wanted = {paths.result(task, r): r for r in range(self.ranks) if r not in got}
        try:
            found = self.backend.transport.read_files(list(wanted))
        except Exception as exc:
            log.warning("hpcbridge: could not re-read the results of %s: %s", self.task_id(task), exc)
            found = {}
        for path, blob in found.items():
            self.seen.add(os.path.basename(path))
            got[wanted[path]] = _load_payload(blob, len(self.jobs[task]), wanted[path])
        return got

    def _stderr_tail(self, task: int) -> str:
        got = self.payloads.get(task, {})
        if len(got) >= self.ranks and not _any_error(got):
            return ""  # every rank succeeded: no error will show it (one round trip per task saved, over SSH)
        try:
            return _tail(self.read_log(task, "err", 64 * 1024), 30)
        except Exception as exc:  # the tail is a courtesy: never let it stop a result from being delivered
            return f"(the job's stderr could not be read: {exc})"

    def _resolve_from_payloads(self, task: int, got: Dict[int, Any], tail: str) -> None:
        missing = [r for r in range(self.ranks) if r not in got]
        for pos, job in enumerate(self.jobs[task]):
            values: List[Any] = []
            failure: Optional[Tuple[int, Any, Tuple[Any, ...]]] = None
            # the first rank to fail (by finish time, then rank) is the cause; the others' errors are
            # usually its echo (a collective whose peer went away)
            for rank in sorted(got, key=lambda r: (got[r].get("finished", 0.0), r)):
                outcomes = got[rank]["outcomes"]
                outcome = outcomes[pos] if pos < len(outcomes) else outcomes[0]
                if outcome[0] == "ok":
                    values.append((rank, outcome[1]))
                elif failure is None:
                    failure = (rank, got[rank], outcome)
            values = [v for _, v in sorted(values, key=lambda rv: rv[0])]
            if job.done():
                continue
            if failure is None and missing:
                job.state = JobState.FAILED
                job.set_exception(self._missing_ranks(job, missing, tail))
            elif failure is None:
                job.state = JobState.COMPLETED
                job._rank_values = values
                job.set_result(values[0] if values else None)
            else:
                job.state = JobState.FAILED
                rank, payload, outcome = failure
                job.set_exception(self._remote_exception(job, rank, payload, outcome, tail))
            self.backend.note_final(job)

    def _missing_ranks(self, job: Job, missing: List[int], tail: str) -> BaseException:
        shown = ", ".join(str(r) for r in missing[:20]) + (" ..." if len(missing) > 20 else "")
        return errors.JobLostError(
            f"job {job.job_id}: rank(s) {shown} of {self.ranks} wrote no result "
            f"({job.native_state or job.state.value}); their stderr is in the job's log",
            job_id=job.job_id,
            state=job.native_state,
            stderr_tail=tail,
        )

    def _remote_exception(
        self, job: Job, rank: int, payload: Any, outcome: Tuple[Any, ...], stderr_tail: str
    ) -> BaseException:
        _, blob, type_name, message, tb_text = outcome
        where = f"job {job.job_id}" + (f", rank {rank}" if self.ranks > 1 else "") + f", host {payload['host']}"
        remote_tb = f"Remote traceback ({where}):\n{tb_text}"
        if stderr_tail:
            remote_tb += f"\n--- stderr of {job.job_id} (last lines) ---\n{stderr_tail}\n"
        exc: Optional[BaseException] = None
        if blob is not None:
            try:
                exc = cloudpickle.loads(blob)
            except Exception:
                exc = None
        if isinstance(exc, BaseException):
            exc.__cause__ = errors.RemoteTraceback(remote_tb)
            try:
                exc.remote_traceback = tb_text  # type: ignore[attr-defined]
                exc.rank = rank  # type: ignore[attr-defined]
            except Exception:  # exceptions with __slots__
                pass
            return exc
        return errors.RemoteError(
            f"{type_name}: {message} ({where})",
            type_name=type_name,
            remote_traceback=tb_text,
            rank=rank if self.ranks > 1 else None,
            job_id=job.job_id,
            state="FAILED",
            stderr_tail=stderr_tail,
        )

    def _resolve_killed(self, task: int, status: NativeStatus, tail: str) -> None:
        after = " and ".join(self.after)
        for job in self.jobs[task]:
            if job.done():
                continue
            job.state = status.state
            job.native_state = status.native
            if _dependency_cancel(self.backend.scheduler, status, self.after):
                exc: BaseException = errors.JobDependencyError(
                    f"job {job.job_id} never ran: it was to start after {after} completed successfully, and "
                    f"the scheduler cancelled it ({status.native}) because that can no longer happen (a job it "
                    "waited for failed, was cancelled or timed out)",
                    after=self.after,
                    job_id=job.job_id,
                    state=status.native,
                    stderr_tail=tail,
                )
            elif status.state in _KILLED:
                cls, what = _KILLED[status.state]
                exc = cls(
                    f"job {job.job_id} {what} (state {status.native})",
                    job_id=job.job_id,
                    state=status.native,
                    stderr_tail=tail,
                )
            else:
                code = "" if status.exit_code is None else f", exit code {status.exit_code}"
                # a scheduler that does not say why (the Slurm-backed PBS wrappers) may have removed it for
                # its dependency
                why = f"; it was to start after {after}: if one of those failed, it never ran" if after else ""
                exc = errors.JobLostError(
                    f"job {job.job_id} ended ({status.native}{code}) without writing a result; "
                    "the job's stderr below usually says why (python or hpcbridge missing on the node, "
                    f"a crash, a module load failure){why}",
                    job_id=job.job_id,
                    state=status.native,
                    stderr_tail=tail,
                )
            job.set_exception(exc)
            self.backend.note_final(job)


def _dependency_cancel(scheduler: Scheduler, status: NativeStatus, after: Tuple[str, ...]) -> bool:
    """Whether a job that waited for ``after`` was cancelled for it, before it started (no nodes); the adapter
    tells a cancel for a dependency from a user's."""
    if status.state != JobState.CANCELLED or not after or status.nodes not in ("", "None assigned"):
        return False
    return scheduler.cancelled_for_dependency(status)


def _load_payload(blob: bytes, ncalls: int, rank: int) -> Any:
    """A result file's payload; one that cannot be unpickled here becomes an error for each of its calls."""
    try:
        return cloudpickle.loads(blob)
    except Exception as exc:
        message = (
            f"the job's result could not be unpickled on this side ({type(exc).__name__}: {exc}); "
            "the value's type must be importable here too"
        )
        outcome = ("err", None, "hpcbridge.errors.SerializationError", message, traceback.format_exc())
        return {"outcomes": [outcome] * ncalls, "rank": rank, "host": "?", "started": 0.0, "finished": 0.0}


def _any_error(got: Dict[int, Any]) -> bool:
    return any(o[0] == "err" for p in got.values() for o in p["outcomes"])


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Poller:
    """Watches an executor's live submissions from one background thread."""

    FIRST_QUERY_S = 2.0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.lock = threading.RLock()
        self._subs: Dict[str, Submission] = {}
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()
        self._query_every = self.FIRST_QUERY_S
        self._next_query = 0.0
        #: how many scheduler status queries this poller made, and how many of them failed (retried later)
        self.queries = 0
        self.failed_queries = 0

    def add(self, sub: Submission) -> None:
        with self.lock:
            self._subs[sub.tag] = sub
            # a new submission gets an early status query, but never postpones one already due (a driver
            # submitting every second must not starve the others of failure detection)
            self._query_every = max(self.FIRST_QUERY_S, self.backend.site.poll_interval_min_s)
            soon = time.monotonic() + self._query_every
            self._next_query = soon if self._thread is None else min(self._next_query, soon)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hpcbridge-poller", daemon=True)
                self._thread.start()
        self._wake.set()

    def _live(self) -> List[Submission]:
        with self.lock:
            live = [s for s in self._subs.values() if s.live_tasks()]
            for tag in [t for t, s in self._subs.items() if not s.live_tasks()]:
                del self._subs[tag]
            if not live:
                self._thread = None
            return live

    def _run(self) -> None:
        site = self.backend.site
        tick = site.poll_interval_min_s
        while True:
            live = self._live()
            if not live:
                self.backend.flush_states()
                return
            try:
                progressed = self._check_files(live)
                if time.monotonic() >= self._next_query:
                    self._query(live)
                    self._query_every = min(self._query_every * 2, site.poll_interval_max_s)
                    self._next_query = time.monotonic() + self._query_every
                progressed |= self._resolve_finished(live)
            except Exception as exc:  # a poll must never kill the poller
                log.warning("hpcbridge: status check failed, will retry: %s", exc)
                progressed = False
            self.backend.flush_states()
            tick = site.poll_interval_min_s if progressed else min(tick * 1.5, max(2.0, site.poll_interval_min_s))
            self._wake.wait(tick)
            self._wake.clear()

    def _check_files(self, live: List[Submission]) -> bool:
        transport = self.backend.transport
        wanted: Dict[str, Tuple[Submission, int, int]] = {}
        for sub in live:
            live_tasks = set(sub.live_tasks())
            try:
                names = transport.listdir(JobFolder(sub.folder).results_dir)
            except Exception as exc:  # one unreadable folder must not hold up the others
                log.warning("hpcbridge: cannot list %s/res, will retry: %s", sub.folder, exc)
                continue
            for name in names:
                if name in sub.seen or not name.endswith(".pkl"):
                    continue
                parsed = parse_result_name(name)
                if parsed is not None and parsed[0] in live_tasks:
                    wanted[JobFolder(sub.folder).result(*parsed)] = (sub, *parsed)
        if not wanted:
            return False
        data = transport.read_files(list(wanted))
        now = time.monotonic()
        progressed = False
        with self.lock:
            for path, blob in data.items():
                sub, task, rank = wanted[path]
                sub.seen.add(os.path.basename(path))
                sub.add_payload(task, rank, _load_payload(blob, len(sub.jobs[task]), rank))
                progressed |= sub.try_resolve(task, now)
        return progressed

    def _resolve_finished(self, live: List[Submission]) -> bool:
        now = time.monotonic()
        progressed = False
        with self.lock:
            for sub in live:
                for task in list(sub.final_at):
                    try:
                        progressed |= sub.try_resolve(task, now)
                    except Exception as exc:  # keep resolving the others
                        log.warning("hpcbridge: could not resolve %s: %s", sub.task_id(task), exc)
        return progressed

    def _query(self, live: List[Submission]) -> None:
        backend = self.backend
        scheduler = backend.scheduler
        subs = [s for s in live if s.job_id]
        if not subs:
            return
        ids = sorted({s.job_id for s in subs})
        arrays = {s.job_id: len(s.chunks) for s in subs if s.is_array}
        self.queries += 1
        statuses = backend.query_status(ids, min(s.submit_time for s in subs), arrays)
        if statuses is None:
            self.failed_queries += 1
            return
        now = time.monotonic()
        missing: List[Tuple[Submission, int]] = []
        with self.lock:
            for sub in subs:
                for task in sub.live_tasks():
                    status = statuses.get(sub.task_id(task))
                    if status is None:
                        missing.append((sub, task))
                        continue
                    self._apply(sub, task, status, now)
        # a task the answer did not list: the adapter may know (PBS: gone from qstat = ended, no history kept),
        # else a per-task command may (Slurm without accounting: scontrol show job), 20 per tick at most
        no_news: List[Tuple[Submission, int]] = []
        with self.lock:
            news = scheduler.missing_statuses(statuses, [sub.task_id(task) for sub, task in missing])
            for sub, task in missing:
                status = news.get(sub.task_id(task))
                if status is None:
                    no_news.append((sub, task))
                else:
                    self._apply(sub, task, status, now)
        if no_news and scheduler.show_job_argv(no_news[0][0].task_id(no_news[0][1]), backend.facts) is not None:
            for sub, task in no_news[:20]:
                try:
                    status = backend.show_job(sub.task_id(task))
                except errors.TransportError as exc:  # once, not 20 times in a row (30 s each): the rest next time
                    log.warning("hpcbridge: looking up %s failed, will retry: %s", sub.task_id(task), exc)
                    break
                if status is not None:
                    with self.lock:
                        self._apply(sub, task, status, now)

    @staticmethod
    def _apply(sub: Submission, task: int, status: NativeStatus, now: float) -> None:
        for job in sub.jobs[task]:
            if status.nodes and status.nodes != "None assigned":
                job.scheduler_nodes = status.nodes
            if not job.done():
                job.state = status.state
                job.native_state = status.native
        if not status.state.is_final:
            sub.final_at.pop(task, None)  # requeued (node failure, preemption): it runs again
        elif task not in sub.final_at:
            sub.final_at[task] = (status, now)
