"""Job: a concurrent.futures.Future for one call running on a cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Dict, Generator, List, Optional, Protocol

from .state import Attempt, JobState
from .usage import Usage


class TaskOwner(Protocol):
    """What a :class:`Job` needs of the submission that carries it (``hpcbridge.submission.Submission``)."""

    site: str
    folder: str
    script: str
    job_id: str
    is_array: bool
    chunks: List[int]
    submit_time: float

    def task_id(self, task: int) -> str: ...

    def read_log(self, task: int, kind: str, max_bytes: int) -> str: ...

    def cancel_tasks(self, tasks: List[int]) -> bool: ...

    def usage_of(self, tasks: List[int]) -> Dict[int, Usage]: ...


class Job(concurrent.futures.Future):  # type: ignore[type-arg]
    """The future of one call. ``job_id`` is the scheduler's id (``123`` or ``123_4`` for array tasks).

    ``result()``/``exception()``/``add_done_callback``/``as_completed``/``wait`` work as for any future, and
    ``await job`` works in asyncio code. ``cancel()`` cancels the job on the cluster.
    """

    def __init__(self, submission: TaskOwner, task: int, position: int) -> None:
        super().__init__()
        self._submission = submission
        self.task = task
        self.position = position
        self.state: JobState = JobState.PENDING
        self.native_state: str = ""
        self._rank_values: Optional[List[Any]] = None
        #: node list from the scheduler's last status (empty until known)
        self.scheduler_nodes: str = ""
        #: while it waits: the queue's reason (Slurm's ``Resources``, ``Priority``, ``BeginTime``...) and the estimated
        #: start as the scheduler prints it, from the poller's last status ('' when none is given)
        self.queue_reason: str = ""
        self.start_estimate: str = ""
        #: the hosts that wrote this job's results (known once it finished)
        self.result_hosts: List[str] = []
        #: when this process saw the job finish (epoch seconds)
        self.finished_at: Optional[float] = None
        #: the container image it runs in and its digest (``IMAGE@DIGEST12``), '' when it runs on the host
        self.image: str = ""
        #: requeue on (docs/requeue.md): one entry per run (nodes, start, end, how it ended), read when it ends
        self.attempts: List[Attempt] = []
        #: what it was given and used, once gathered (:meth:`usage`)
        self._usage: Optional[Usage] = None
        self.add_done_callback(_note_finished)

    # -- identity -----------------------------------------------------------------------------------------
    @property
    def submission(self) -> TaskOwner:
        """The scheduler job (plain or array) that carries this call."""
        return self._submission

    @property
    def job_id(self) -> str:
        return self._submission.task_id(self.task)

    @property
    def site(self) -> str:
        return self._submission.site

    @property
    def folder(self) -> str:
        """The job's folder on the cluster side."""
        return self._submission.folder

    @property
    def script(self) -> str:
        """The batch script that was submitted."""
        return self._submission.script

    # -- logs ---------------------------------------------------------------------------------------------
    def stdout(self, max_bytes: int = 1 << 20) -> str:
        """The job's standard output so far (the last ``max_bytes``); empty if there is none yet."""
        return self._submission.read_log(self.task, "out", max_bytes)

    def stderr(self, max_bytes: int = 1 << 20) -> str:
        """The job's standard error so far (the last ``max_bytes``)."""
        return self._submission.read_log(self.task, "err", max_bytes)

    # -- future -------------------------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel the job on the cluster. Calls bundled into the same task are cancelled with it.

        Returns False when the job has already finished.
        """
        if self.done():
            return False
        if not self._submission.job_id:  # gathered by executor.batch() and not submitted yet: never will be
            return mark_cancelled(self)
        return self._submission.cancel_tasks([self.task])

    def running(self) -> bool:
        return self.state == JobState.RUNNING and not self.done()

    def results(self, timeout: Optional[float] = None) -> List[Any]:
        """Every rank's return value, by rank (one item for single-task jobs)."""
        value = self.result(timeout)
        return list(self._rank_values) if self._rank_values is not None else [value]

    def usage(self, timeout: Optional[float] = None) -> Usage:
        """What the job was given against what it used (:class:`hpcbridge.usage.Usage`): waits until it finished
        (``timeout``: ``TimeoutError`` after that many seconds), then for its figures (the poller gathers them
        once it ended: the scheduler's accounting, the in-job sampler's summary, the request; docs/usage.md)."""
        if self._usage is None:
            if concurrent.futures.wait([self], timeout).not_done:
                raise TimeoutError(f"job {self.job_id} not finished after {timeout} s: its usage is not known yet")
            got = self._submission.usage_of([self.task]).get(self.task)
            if got is not None:
                self._usage = got
        if self._usage is None:
            from .errors import JobLostError

            raise JobLostError(f"job {self.job_id}: no usage figures could be gathered")
        return self._usage

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> Any:
        """``await job``. When the awaiting task is cancelled, so is the job, and its scancel/qdel runs on a
        worker thread: a command (over SSH, a round trip or a reconnect) must not stall the event loop."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def set_woken() -> None:
            if not woken.done():
                woken.set_result(None)

        def wake(_: concurrent.futures.Future) -> None:  # type: ignore[type-arg]
            try:
                loop.call_soon_threadsafe(set_woken)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        self.add_done_callback(wake)
        try:
            await woken
        except asyncio.CancelledError:
            try:
                loop.run_in_executor(None, self.cancel)  # asyncio.run() waits for it before it closes the loop
            except RuntimeError:  # the loop's executor is shut down already: cancel here, as a last resort
                self.cancel()
            raise
        if self.cancelled():  # cancelled elsewhere (job.cancel(), a bundled sibling's await): as wrap_future does
            raise asyncio.CancelledError()
        return self.result()

    @property
    def nodes(self) -> str:
        """Where the job ran or runs: the scheduler's node list, else the hosts that wrote its results."""
        if self.scheduler_nodes:
            return self.scheduler_nodes
        return ",".join(self.result_hosts)

    @property
    def elapsed(self) -> Optional[float]:
        """Seconds from submission until it finished (or until now); None before it was submitted."""
        start = self._submission.submit_time
        if not start:
            return None
        return max(0.0, (self.finished_at or time.time()) - start)

    # -- display ------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.state.value} site={self.site!r}>"

    def _repr_html_(self) -> str:
        from .display import jobs_html

        return jobs_html([self])


def mark_cancelled(job: concurrent.futures.Future) -> bool:  # type: ignore[type-arg]
    """Mark a future cancelled and wake every waiter (result(), wait(), as_completed()); False if it was done."""
    if not concurrent.futures.Future.cancel(job):
        return False
    job.set_running_or_notify_cancel()
    return True


def _note_finished(job: concurrent.futures.Future) -> None:  # type: ignore[type-arg]
    if isinstance(job, Job) and job.finished_at is None:
        job.finished_at = time.time()
