"""What one site needs at run time: its transport, scheduler adapter, poller and the job registry.

The backend holds them together and keeps what is learned at run time; each job is done elsewhere: submitting
exactly once (:mod:`hpcbridge.submit_once`), the cluster-side python check (:mod:`hpcbridge.remote_env`),
watching jobs (:mod:`hpcbridge.poll`).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import threading
import time
import weakref
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from . import attempts, container_check, remote_env, submit_once
from .containers import container_for
from .errors import ConfigError, TransportError
from .job import Job
from .jobenv import RANK_VAR, TASK_VAR
from .launchers import host_python_needed
from .poll import Poller
from .registry import Registry
from .schedulers import scheduler_for, scrub_prefixes
from .schedulers.base import NativeStatus, Verdict
from .sites import Site
from .spec import Resources
from .state import Attempt
from .store import SAFE_PATH, JobFolder
from .submission import Submission
from .transport import make_transport
from .transport.base import Completed, Transport
from .usage import Usage

log = logging.getLogger("hpcbridge")

#: Variables of an enclosing job that must not leak into a new submission (JupyterHub-on-HPC notebooks run
#: inside a job): its MPI launch's (srun's PMI, OpenMPI's mpirun), with each scheduler's own (its scrub_prefixes);
#: and a JupyterHub notebook server's (JUPYTERHUB_*, JPY_*): they carry the hub's API token of the user's server,
#: which a child job's environment (and whatever the job runs) could read and use against the hub.
SCRUB_PREFIXES = ("PMI_", "PMIX_", "OMPI_COMM_WORLD_", "JUPYTERHUB_", "JPY_")
SCRUB_NAMES = (TASK_VAR, RANK_VAR)


def clean_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``environ`` without the scheduler variables of an enclosing job."""
    environ = os.environ if environ is None else environ
    prefixes = SCRUB_PREFIXES + scrub_prefixes()
    return {k: v for k, v in environ.items() if not k.startswith(prefixes) and k not in SCRUB_NAMES}




#: every backend with final states still to write: flushed at the interpreter's exit (a script or CLI that exits as
#: soon as its future resolved would otherwise leave the registry saying RUNNING)
_LIVE_BACKENDS: weakref.WeakSet[Backend] = weakref.WeakSet()


def flush_all_states() -> None:
    """Write every backend's pending final states to the registry (at exit)."""
    for backend in list(_LIVE_BACKENDS):
        backend.flush_states()


atexit.register(flush_all_states)


class Backend:
    """Shared by an executor and its ``with_resources`` copies.

    ``transport``: the one to use instead of the site's own (``hpcbridge.testing.ScriptedTransport`` in tests).
    """

    def __init__(self, site: Site, folder: Optional[str] = None, *, transport: Optional[Transport] = None) -> None:
        self.site = site
        self.transport = make_transport(site) if transport is None else transport
        self.root = self.transport.expanduser(folder or site.workdir).rstrip("/")
        if not SAFE_PATH.match(self.root):
            raise ConfigError(
                f"site {site.name!r}: the job folder {self.root!r} must be an absolute path without spaces, quotes, "
                "'%' or '#' (it is written into the scheduler's directives); set another `workdir` in the "
                "site-config or pass folder=..."
            )
        self.scheduler = scheduler_for(site, self.root)
        #: what the scheduler's answers taught about the cluster (the adapter keeps no state)
        self.facts = self.scheduler.initial_facts()
        #: guards the resolution state of every submission of this backend (the poller's and cancels')
        self.lock = threading.RLock()
        self.submitter = submit_once.SubmitOnce(
            self.run, self.transport.read_files, self.scheduler, site.name,
            killed_on_timeout=site.transport == "local",
        )
        self.poller = Poller(self)
        self.registry = Registry()
        self._root_ready = False
        self._final: List[Tuple[str, int, str]] = []
        self._final_lock = threading.Lock()
        _LIVE_BACKENDS.add(self)

    # -- commands -----------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: Optional[float] = None) -> Completed:
        env = clean_env() if self.site.transport == "local" else None
        timeout = submit_once.COMMAND_TIMEOUT_S if timeout is None else timeout
        return self.transport.run(argv, env=env, timeout=timeout)

    def run_checked(
        self, argv: Sequence[str], what: str, tag: Optional[str] = None, marker: Optional[str] = None
    ) -> Completed:
        """Run ``argv``; a non-zero exit raises :class:`SchedulerError`. With ``tag`` (and ``marker``), the command
        submits a job and runs at most once (:class:`hpcbridge.submit_once.SubmitOnce`)."""
        return self.submitter.run_checked(argv, what, tag=tag, marker=marker)

    def query_status(
        self, job_ids: Sequence[str], since: float, arrays: Optional[Mapping[str, int]] = None, _again: bool = False,
        *, waiting: bool = False,
    ) -> Optional[Dict[str, NativeStatus]]:
        """Statuses of all tasks of ``job_ids`` (``arrays``: the array ones -> their sizes), or None when the query
        failed (retried later). ``waiting``: every one of them was last seen waiting in the queue (the adapter's
        :meth:`~hpcbridge.schedulers.base.Scheduler.waiting_status_query` then, if it has one)."""
        waiting_query = self.scheduler.waiting_status_query(job_ids, self.facts, arrays) if waiting else None
        query = waiting_query or self.scheduler.status_query(job_ids, since, time.time(), self.facts, arrays)
        try:
            # a hung controller holds up the poller thread: give up after 30 s, retry on the back-off
            out = self.run(query.argv, timeout=30)
        except TransportError as exc:
            log.warning("hpcbridge: status query failed, will retry: %s", exc)
            return None
        answer = self.scheduler.parse_status(query, out)
        if answer.facts is not None:
            self.facts = answer.facts
        if answer.note:
            log.warning("hpcbridge: site %r: %s", self.site.name, answer.note)
        if answer.verdict is Verdict.ANSWERED:
            if waiting_query is not None:  # squeue has no exit code: an end is asked the usual way next tick
                return {k: s for k, s in answer.statuses.items() if not s.state.is_final}
            return dict(answer.statuses)
        if answer.verdict is Verdict.ASK_AGAIN and not _again:
            return self.query_status(job_ids, since, arrays, _again=True)
        log.warning("hpcbridge: status query %s failed (%s), will retry: %s",
                    out.argv[0], out.returncode, out.stderr.strip()[-300:])
        return None

    def show_job(self, task_id: str) -> Optional[NativeStatus]:
        argv = self.scheduler.show_job_argv(task_id, self.facts)
        if argv is None:
            return None
        out = self.run(argv, timeout=30)  # a TransportError: the poller stops its per-task looks until next time
        if out.returncode != 0:
            return self.scheduler.show_job_failed(task_id, out.returncode, out.stderr)
        return self.scheduler.parse_show_job(task_id, out.stdout)

    def confirm_end(self, status: NativeStatus) -> Optional[NativeStatus]:
        """A final status the scheduler may still restart (PREEMPTED, NODE_FAIL of a requeueable job): slurmctld's
        current one when it runs again, the status itself when it is the end, None when that cannot be told now
        (asked again on the next query)."""
        argv = self.scheduler.confirm_end_argv(status, self.facts)
        if argv is None:
            return status
        try:
            out = self.run(argv, timeout=30)
        except TransportError as exc:
            log.warning("hpcbridge: looking up %s failed, will retry: %s", status.job_id, exc)
            return None
        if out.returncode != 0:  # slurmctld forgot it (MinJobAge): sacct's record is the end
            return status if "Invalid job id" in out.stderr else None
        now = self.scheduler.parse_show_job(status.job_id, out.stdout)
        return now if now is not None and not now.state.is_final else status

    def attempts(self, task_id: str, folder: str, task: int, last: Optional[str] = None) -> List[Attempt]:
        """Every run of a task with requeue on (docs/requeue.md), oldest first; [] when they cannot be read.
        ``last``: how the newest run ended as its results say (``done``, ``FAILED``), or None."""
        argv = self.scheduler.attempts_argv(task_id, self.facts)
        if argv is None:
            return []
        try:
            out = self.run(argv, timeout=30)
            records = self.scheduler.parse_attempts(out.stdout) if out.returncode == 0 else []
            costs = self.scheduler.parse_attempt_costs(out.stdout) if out.returncode == 0 else []
            paths = JobFolder(folder)
            wanted = {paths.run_note(task, n): n for n in range(len(records))}
            read = self.transport.read_files([*wanted, paths.checkpoint_marker(task)])
            notes = {wanted[p]: data.decode("utf-8", "replace") for p, data in read.items() if p in wanted}
            saved = attempts.saves(read.get(paths.checkpoint_marker(task)))
        except Exception as exc:  # the runs are a record, never a reason to fail a job
            log.warning("hpcbridge: could not read the runs of %s: %s", task_id, exc)
            return []
        return attempts.recomputed(attempts.build(records, notes, last), costs, saved)

    def usage_of(self, sub: Submission, tasks: Sequence[int]) -> Dict[int, Usage]:
        """The usage of finished tasks of ``sub`` (:meth:`hpcbridge.measure.UsageGatherer.fetch`)."""
        return self.poller.usage.fetch(sub, tasks)

    # -- folders ------------------------------------------------------------------------------------------
    def ensure_root(self) -> None:
        if not self._root_ready:
            self.transport.makedirs(self.root, mode=0o700)
            self._root_ready = True

    # -- the cluster-side python ----------------------------------------------------------------------------
    def check_remote_env(self) -> None:
        """Once per site and process: the cluster's python can run these jobs (:mod:`hpcbridge.remote_env`)."""
        remote_env.check(self.site, self.run)

    def check_job_env(
        self, res: Resources, folder: str, workdir: Optional[str] = None
    ) -> Optional[container_check.ImageInfo]:
        """Before a submission of ``res`` (job folder ``folder``, starting in ``workdir``): the cluster's python where
        the job runs hpcbridge on the host, and the job's image where it runs in a container
        (:mod:`hpcbridge.container_check`); the image's records, or None."""
        container = container_for(self.site, res, folder=folder, workdir=workdir)
        if host_python_needed(self.site, res):
            self.check_remote_env()
        if container is None:
            return None
        return container_check.check(self.site, container, self.run)

    # -- registry -----------------------------------------------------------------------------------------
    def note_final(self, job: Job) -> None:
        """Keep a finished job's state for the registry (written by :meth:`flush_states`, at the latest at exit).
        Called before the job's future resolves, so that a caller that exits at once still has it written."""
        with self._final_lock:
            self._final.append((job.job_id, job.position, job.state.value))

    def save_attempts(self, jobs: Sequence[Job]) -> None:
        """Write the runs of a requeued task's jobs to the registry (docs/requeue.md); a failure is only logged."""
        rows = [(j.job_id, j.position, json.dumps([dataclasses.asdict(a) for a in j.attempts])) for j in jobs]
        try:
            self.registry.update_attempts(self.site.name, rows)
        except Exception as exc:  # the registry is a convenience; never fail a job over it
            log.warning("hpcbridge: could not record the runs of %s in the job registry: %s", rows[0][0], exc)

    def flush_states(self) -> None:
        """Write the final states noted so far to the registry; kept for the next flush if that fails."""
        with self._final_lock:
            rows, self._final = self._final, []
        if not rows:
            return
        try:
            self.registry.update_states(self.site.name, rows)
        except Exception as exc:  # the registry is a convenience; never fail a job over it
            log.warning("hpcbridge: could not update the job registry (will retry): %s", exc)
            with self._final_lock:
                self._final[:0] = rows
