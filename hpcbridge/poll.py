"""Status: result files as the fast path, one batched scheduler query per tick with back-off.

One :class:`Poller` per executor (shared by its ``with_resources`` copies) watches every live submission:
each tick lists each submission's ``res/`` folder (one directory read, no per-job stats), reads the new result
files in one batched read that also says who owns them and their folders (a file someone else could have written
is refused, never unpickled) and, when the back-off allows, asks the scheduler about all unfinished jobs in one
command. A failed query is retried later and never marks a job failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from . import errors, outcome
from .measure import UsageGatherer, UsageHost
from .schedulers.base import ClusterFacts, NativeStatus
from .state import JobState
from .store import parse_result_name
from .submission import Submission, SubmissionHost

log = logging.getLogger("hpcbridge")


class StatusSource(SubmissionHost, UsageHost, Protocol):
    """What the poller needs of its site at run time (:class:`hpcbridge.backend.Backend` is one)."""

    #: what the scheduler's answers taught about the cluster
    facts: ClusterFacts

    def query_status(
        self, job_ids: Sequence[str], since: float, arrays: Optional[Mapping[str, int]] = None, *, waiting: bool = False
    ) -> Optional[Dict[str, NativeStatus]]: ...

    def show_job(self, task_id: str) -> Optional[NativeStatus]: ...

    def confirm_end(self, status: NativeStatus) -> Optional[NativeStatus]: ...


def next_query_delay(current_s: float, max_s: float) -> float:
    """The back-off between scheduler queries: doubled after each, up to the site's ``poll_interval_max_s``."""
    return min(current_s * 2, max_s)


def next_tick(current_s: float, progressed: bool, min_s: float) -> float:
    """How long the poller sleeps: the site's minimum after progress, else 1.5x longer up to 2 s (or the minimum)."""
    return min_s if progressed else min(current_s * 1.5, max(2.0, min_s))


class Poller:
    """Watches an executor's live submissions from one background thread."""

    FIRST_QUERY_S = 2.0

    def __init__(self, backend: StatusSource) -> None:
        self.backend = backend
        self.lock = backend.lock
        self._subs: Dict[str, Submission] = {}
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()
        self._query_every = self.FIRST_QUERY_S
        self._next_query = 0.0
        #: the usage of the tasks it resolved: one batched scheduler command per tick (hpcbridge.measure)
        self.usage = UsageGatherer(backend)
        #: called (in the poller's thread) after every tick; one that returns False is dropped (hpcbridge.live)
        self.listeners: List[Callable[[], bool]] = []
        #: whether the last waiting-jobs query listed every job (else the next query is the usual one)
        self._waiting_listed = True
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
            for sub in self._subs.values():  # newly resolved tasks (cancelled ones too): gather their usage
                for task in sub.resolved - sub.usage_wanted:
                    sub.usage_wanted.add(task)
                    self.usage.want(sub, task)
            live = [s for s in self._subs.values() if s.live_tasks()]
            for tag in [t for t, s in self._subs.items() if not s.live_tasks()]:
                del self._subs[tag]
            if not live and not self.usage.pending:
                self._thread = None
            return live

    def _run(self) -> None:
        site = self.backend.site
        tick = site.poll_interval_min_s
        while True:
            live = self._live()
            if not live and not self.usage.pending:
                self.backend.flush_states()
                return
            try:
                progressed = self._check_files(live)
                if time.monotonic() >= self._next_query:
                    self._query(live)
                    self._query_every = next_query_delay(self._query_every, site.poll_interval_max_s)
                    self._next_query = time.monotonic() + self._query_every
                progressed |= self._resolve_finished(live)
                self.usage.tick()  # one batched query for the jobs that newly finished
            except Exception as exc:  # a poll must never kill the poller
                log.warning("hpcbridge: status check failed, will retry: %s", exc)
                progressed = False
            self.backend.flush_states()
            self._tell_listeners()
            tick = next_tick(tick, progressed, site.poll_interval_min_s)
            self._wake.wait(tick)
            self._wake.clear()

    def listen(self, listener: Callable[[], bool]) -> None:
        """Call ``listener`` after every tick (what a live display redraws from: no query of its own)."""
        with self.lock:
            self.listeners.append(listener)

    def _tell_listeners(self) -> None:
        with self.lock:
            listeners = list(self.listeners)
        for listener in listeners:
            try:
                keep = listener()
            except Exception as exc:  # a display must never stop the poller
                log.warning("hpcbridge: a job display failed: %s", exc)
                keep = False
            if not keep:
                with self.lock:
                    if listener in self.listeners:
                        self.listeners.remove(listener)

    def _check_files(self, live: List[Submission]) -> bool:
        transport = self.backend.transport
        wanted: Dict[str, Tuple[Submission, int, int]] = {}
        for sub in live:
            live_tasks = set(sub.live_tasks())
            try:
                names = transport.listdir(sub.paths.results_dir)
            except Exception as exc:  # one unreadable folder must not hold up the others
                log.warning("hpcbridge: cannot list %s/res, will retry: %s", sub.folder, exc)
                continue
            for name in names:
                if name in sub.seen or not name.endswith(".pkl"):
                    continue
                parsed = parse_result_name(name)
                if parsed is not None and parsed[0] in live_tasks:
                    wanted[sub.paths.result(*parsed)] = (sub, *parsed)
        if not wanted:
            return False
        # one round trip for every file, with the owner and mode of each and of its folders (outcome.result_refusal)
        folders = {f for sub, _, _ in wanted.values() for f in (sub.folder, sub.paths.results_dir)}
        read = transport.read_with_owners(list(wanted), sorted(folders))
        now = time.monotonic()
        progressed = False
        with self.lock:
            for path in read.files:
                sub, task, rank = wanted[path]
                sub.seen.add(os.path.basename(path))
                sub.add_payload(task, rank, outcome.checked_payload(sub.paths, path, read, len(sub.jobs[task]), rank))
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
        ids = sorted({s.query_id for s in subs})
        arrays = {s.query_id: len(s.chunks) for s in subs if s.is_array}
        # every job still waits: the adapter may have a query that tells more of waiting jobs (Slurm: squeue's reason
        # and estimated start where sacct is the status command); a job it did not list is asked the usual way next
        waiting = self._waiting_listed and all(
            job.state is JobState.PENDING for sub in subs for task in sub.live_tasks() for job in sub.jobs[task]
        )
        self.queries += 1
        self._waiting_listed = not waiting  # a waiting query that fails (or raises) is not asked twice in a row
        statuses = backend.query_status(ids, min(s.submit_time for s in subs), arrays, waiting=waiting)
        if statuses is None:
            self.failed_queries += 1
            return
        # an end the scheduler may still undo (a requeue it does itself) is checked before it counts
        for task_id, reported in list(statuses.items()):
            if reported.state.is_final and backend.scheduler.confirm_end_argv(reported, backend.facts) is not None:
                confirmed = backend.confirm_end(reported)
                if confirmed is None:
                    del statuses[task_id]
                else:
                    statuses[task_id] = confirmed
        now = time.monotonic()
        missing: List[Tuple[Submission, int]] = []
        with self.lock:
            for sub in subs:
                for task in sub.live_tasks():
                    status = statuses.get(sub.live_task_id(task))
                    if status is None:
                        missing.append((sub, task))
                        continue
                    self._apply(sub, task, status, now)
        self._waiting_listed = not waiting or not missing
        # a task the answer did not list: the adapter may know (PBS: gone from qstat = ended, no history kept),
        # else a per-task command may (Slurm without accounting: scontrol show job), 20 per tick at most
        no_news: List[Tuple[Submission, int]] = []
        with self.lock:
            news = scheduler.missing_statuses(statuses, [sub.live_task_id(task) for sub, task in missing])
            for sub, task in missing:
                status = news.get(sub.live_task_id(task))
                if status is None:
                    no_news.append((sub, task))
                else:
                    self._apply(sub, task, status, now)
        if no_news and scheduler.show_job_argv(no_news[0][0].task_id(no_news[0][1]), backend.facts) is not None:
            for sub, task in no_news[:20]:
                try:
                    status = backend.show_job(sub.live_task_id(task))
                except errors.TransportError as exc:  # once, not 20 times in a row (30 s each): the rest next time
                    log.warning("hpcbridge: looking up %s failed, will retry: %s", sub.live_task_id(task), exc)
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
                waiting = status.state is JobState.PENDING
                job.queue_reason = status.reason if waiting and status.reason != "None" else ""
                job.start_estimate = status.start_estimate if waiting else ""
        if not status.state.is_final:
            sub.final_at.pop(task, None)  # requeued (node failure, preemption): it runs again
        elif task not in sub.final_at:
            sub.final_at[task] = (status, now)
