"""Executor: Python callables to batch jobs (plain, arrays, bundles) and back."""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import getpass
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from ._version import __version__
from .after import check_known, dependency_ids
from .attaching import attach as attach  # re-exported: hpcbridge.executor.attach keeps working
from .backend import Backend
from .containers import container_for, job_files
from .display import describe, image_label, progress_for
from .errors import HpcBridgeError, ResourceError, TransportError, UsageError
from .group import JobGroup, cancel_jobs
from .here import check_walltime
from .job import Job, mark_cancelled
from .launchers import with_site_launcher
from .pickling import Call, pickle_task, qualname
from .schedulers import supports_after
from .script import render_script, script_context
from .sites import Site, default_site, load_site
from .spec import Resources, resources_from
from .store import SAFE_PATH, JobFolder, pack_inputs
from .submission import Submission
from .transport.base import Transport

log = logging.getLogger("hpcbridge")


class Executor(concurrent.futures.Executor):
    """Run Python callables as jobs on a site.

    Parameters
    ----------
    site
        A site name (``"local"``, or a site-config's name) or a :class:`~hpcbridge.sites.Site`. Default: the same
        site the CLI uses without ``--site`` (``$HPCBRIDGE_SITE``, else the project file's ``default_site``, else
        ``"local"``; :func:`hpcbridge.sites.default_site`).
    folder
        Cluster-side folder for job files (default: the site's ``workdir``).
    transport
        The transport to use instead of the site's own: :class:`hpcbridge.testing.ScriptedTransport` in a unit test
        of code that submits jobs (docs/testing.md).
    **resources
        ``nodes, tasks_per_node, cpus_per_task, gpus_per_node, mem_gb, walltime, partition, account, qos, name,
        extra_directives, launcher, array_parallelism``, ``container, container_binds, container_runtime,
        container_env`` (docs/containers.md; ``container=None`` opts out of the site's image), and ``after`` (Jobs
        or job ids this executor's jobs wait for: they start only once every one of them completed successfully);
        unknown names fail with the list of valid ones.
    right_size
        Size each function's jobs from the registry's history of its earlier runs on this site (memory, walltime,
        CPUs and GPUs: :func:`hpcbridge.suggest`'s arithmetic, against this executor's request), and say once
        per function what changed (a warning on the ``hpcbridge`` logger). None: the site-config's
        ``right_size`` (default False). Jobs gathered by ``batch()`` keep the executor's request.
    """

    def __init__(
        self,
        site: Union[str, Site, None] = None,
        *,
        folder: Optional[str] = None,
        transport: Optional[Transport] = None,
        right_size: Optional[bool] = None,
        **resources: Any,
    ) -> None:
        if site is None:
            site = default_site()
        site_obj = load_site(site) if isinstance(site, str) else site
        self.resources: Resources = _resources(site_obj.default_resources(), resources, site_obj)
        site_obj.check_resources(self.resources)  # partition limits, before anything is submitted
        container_for(site_obj, self.resources)  # the container's image, runtime and binds, likewise
        self._backend = Backend(site_obj, folder, transport=transport)
        self._batch: Optional[List[Tuple[Submission, List[Call]]]] = None
        self._submissions: List[Submission] = []
        self.right_size = site_obj.right_size if right_size is None else bool(right_size)
        self._sized: Dict[str, Executor] = {}  # function -> this executor right-sized for it (right_size)

    @property
    def site(self) -> Site:
        return self._backend.site

    def with_resources(self, **resources: Any) -> Executor:
        """A copy with some resources changed; it shares this executor's connection and poller."""
        changed = _resources(self.resources, resources, self._backend.site)
        self._backend.site.check_resources(changed)
        container_for(self._backend.site, changed)
        other = copy.copy(self)  # shares the backend (connection, poller) and the list of submissions
        other.resources = changed
        other._batch = None
        other._sized = {}
        return other

    # -- the Executor interface ---------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Job:
        """Run ``fn(*args, **kwargs)`` as one job and return its future."""
        call: Call = (fn, args, kwargs)
        if self._batch is not None:
            return self._batch_add(call)
        return self._sized_for(fn)._submit([[call]], is_array=False)[0]

    def map_jobs(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1) -> JobGroup:
        """One job per call, as one array job (split when longer than the site's max array size).

        ``chunksize=k`` runs k calls in each array task, for calls too short to be worth a task each.
        Returns a :class:`~hpcbridge.group.JobGroup`: a list of jobs that also displays as a table in Jupyter.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ResourceError(f"chunksize={chunksize!r} must be a whole number >= 1 (the calls per array task)")
        calls: List[Call] = [(fn, tuple(args), {}) for args in zip(*iterables)]
        if not calls:
            return JobGroup()
        tasks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
        return JobGroup(self._sized_for(fn)._submit(tasks, is_array=True))

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
        progress: Optional[bool] = None,
    ) -> Iterator[Any]:
        """Like :meth:`concurrent.futures.Executor.map`: results in order; the jobs are submitted at once.

        ``progress``: live progress in a notebook or terminal (default: only when someone watches; see
        :mod:`hpcbridge.display`).
        """
        end = None if timeout is None else time.monotonic() + timeout
        jobs = self.map_jobs(fn, *iterables, chunksize=chunksize)

        def results() -> Iterator[Any]:
            done = 0
            shown = progress_for(jobs, describe(fn), progress)
            try:
                for job in jobs:
                    shown.wait(job, None if end is None else max(0.0, end - time.monotonic()))
                    yield job.result(None if end is None else max(0.0, end - time.monotonic()))
                    done += 1
            finally:
                shown.close()
                if done < len(jobs):
                    with contextlib.suppress(HpcBridgeError):  # never hide why the map stopped
                        cancel_jobs(jobs[done:])

        return results()

    @contextlib.contextmanager
    def batch(self) -> Iterator[Executor]:
        """Gather the ``submit`` calls made inside the block into one array job, submitted at the end.

        If the block raises, nothing is submitted and the gathered jobs are cancelled. If submitting fails at the
        end, what was already submitted of the batch is cancelled, the gathered jobs carry the error, and it is
        raised.
        """
        if self._batch is not None:
            raise UsageError("executor.batch() blocks cannot be nested: end the outer block first (its jobs are "
                             "submitted when it ends), or gather every call in one block")
        self._batch = []
        try:
            yield self
        except BaseException:
            pending, self._batch = self._batch, None
            for sub, _ in pending:
                for job in sub.all_jobs:
                    mark_cancelled(job)
            raise
        pending, self._batch = self._batch, None
        sent: List[Submission] = []
        try:
            for sub, calls in pending:
                # calls whose job was cancelled inside the block are left out
                keep = [(job, call) for job, call in zip(sub.all_jobs, calls) if not job.cancelled()]
                if not keep:
                    sent.append(sub)
                    continue
                for task, (job, _) in enumerate(keep):
                    job.task = task
                sub.jobs = [[job] for job, _ in keep]
                sub.chunks = [1] * len(keep)
                self._send(sub, [[call] for _, call in keep])
                sent.append(sub)
        except BaseException as exc:
            for sub in sent:  # no orphans
                with contextlib.suppress(Exception):
                    sub.cancel_tasks(sub.live_tasks())
            for sub, _ in pending[len(sent) :]:
                for job in sub.all_jobs:
                    if not job.done():
                        job.set_exception(exc)
            raise

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Optionally cancel the jobs still running (``cancel_futures``), and wait for the rest."""
        if cancel_futures:
            for sub in self._submissions:
                sub.cancel_tasks(sub.live_tasks())
        if wait:
            concurrent.futures.wait([j for sub in self._submissions for j in sub.all_jobs])

    # -- inspection ---------------------------------------------------------------------------------------
    def render(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """The exact batch script ``submit(fn, *args, **kwargs)`` would submit; nothing is submitted."""
        pickle_task([(fn, args, kwargs)])
        tag = _new_tag()
        return self._sized_for(fn)._render_script(f"{self._backend.root}/{tag}", tag, None, fn, 1)

    # -- internals ----------------------------------------------------------------------------------------
    def _sized_for(self, fn: Callable[..., Any]) -> Executor:
        """This executor, or (``right_size``) a copy sized for ``fn`` from its history: computed once per function."""
        if not self.right_size:
            return self
        name = qualname(fn)
        if name not in self._sized:
            self._sized[name] = self._right_sized(name)
        return self._sized[name]

    def _right_sized(self, name: str) -> Executor:
        from .right_size import right_sized

        advice, message = right_sized(self.site.name, self.resources, name)
        sized = self
        if advice.changes:
            try:
                sized = self.with_resources(**advice.resources())
            except ResourceError as exc:  # more than the site gives (an increase after a timeout or OOM)
                log.warning("hpcbridge: right_size: %s: %s; the request is kept", name, exc)
                return self
            log.warning("%s", message)
        else:
            log.info("hpcbridge: right_size: %s: %s", name, "; ".join(advice.notes) or "the request fits")
        sized = copy.copy(sized)
        sized.right_size = False
        return sized

    def _start_dir(self) -> Optional[str]:
        return _start_dir_of(self._backend.site)

    def _batch_add(self, call: Call) -> Job:
        assert self._batch is not None
        pickle_task([call])
        if not self._batch or len(self._batch[-1][1]) >= self._backend.site.max_array_size:
            sub = self._new_submission(chunks=[], is_array=True)
            self._batch.append((sub, []))
        sub, calls = self._batch[-1]
        calls.append(call)
        sub.chunks.append(1)
        job = Job(sub, len(sub.jobs), 0)
        sub.jobs.append([job])
        return job

    def _submit(self, tasks: List[List[Call]], is_array: bool) -> List[Job]:
        starts = [0]
        for task in tasks[:-1]:
            starts.append(starts[-1] + len(task))
        blobs = [pickle_task(task, first if is_array else None) for task, first in zip(tasks, starts)]
        size = self._backend.site.max_array_size if is_array else 1
        pieces = [(tasks[i : i + size], blobs[i : i + size]) for i in range(0, len(tasks), size)]
        subs: List[Submission] = []
        try:
            for piece_tasks, piece_blobs in pieces:
                sub = self._new_submission([len(t) for t in piece_tasks], is_array)
                self._send(sub, piece_tasks, piece_blobs)
                subs.append(sub)
        except BaseException:
            for sub in subs:  # no orphans: what was already submitted of this request is cancelled
                with contextlib.suppress(Exception):
                    sub.cancel_tasks(sub.live_tasks())
            raise
        return [job for sub in subs for job in sub.all_jobs]

    def _new_submission(self, chunks: List[int], is_array: bool) -> Submission:
        tag = _new_tag()
        res = with_site_launcher(self._backend.site, self.resources)  # PBS: mpirun unless one was chosen
        ranks = res.ntasks if res.launcher else 1
        sub = Submission(
            self._backend,
            tag=tag,
            folder=f"{self._backend.root}/{tag}",
            script="",
            chunks=chunks,
            is_array=is_array,
            ranks=ranks,
            submit_time=0.0,
        )
        sub.after = res.after  # what a cancellation before it started is blamed on
        sub.requeue = res.requeue  # its runs are read when a task ends (docs/requeue.md)
        return sub

    def _send(self, sub: Submission, tasks: List[List[Call]], blobs: Optional[List[bytes]] = None) -> None:
        """Write the submission's files, submit it, record it and start watching it."""
        backend = self._backend
        blobs = blobs if blobs is not None else [pickle_task(t) for t in tasks]
        fn = tasks[0][0][0]
        # the cluster's python, the job's image
        image = backend.check_job_env(self.resources, sub.folder, self._start_dir())
        check_known(backend, sub.after)  # after= ids the scheduler does not know: refused, nothing written
        backend.ensure_root()
        sub.script = self._render_script(
            sub.folder, sub.tag, len(tasks) if sub.is_array else None, fn, sum(len(t) for t in tasks),
            container_binary=image.binary if image is not None else None,
        )
        transport = backend.transport
        meta = {
            "function": qualname(fn),
            "calls": [len(t) for t in tasks],
            "is_array": sub.is_array,
            "ranks": sub.ranks,
            "resources": dataclasses.asdict(with_site_launcher(backend.site, self.resources)),
            "client": {"host": socket.gethostname(), "user": _user(), "hpcbridge": __version__},
        }
        if image is not None:  # the image and its digest (docs/containers.md, provenance)
            meta["container"] = image.record()
        submitting = False
        try:
            paths = JobFolder(sub.folder)
            transport.makedirs(paths.path, *paths.subdirs, mode=0o700)
            transport.write_files(
                {
                    paths.inputs: pack_inputs(blobs),
                    paths.meta: json.dumps(meta, indent=1, default=str).encode(),
                    paths.script: sub.script.encode(),
                    **job_files(backend.site, self.resources, sub.folder),
                }
            )
            sub.submit_time = time.time()
            submitting = True
            out = backend.run_checked(
                backend.scheduler.submit_argv(paths.script), "submit the job", tag=sub.tag,
                marker=paths.submit_marker,  # exactly once, even across a dropped connection
            )
            sub.job_id = backend.scheduler.parse_submit(out.stdout)
        except BaseException as exc:
            # a job that may exist keeps its folder: the outcome is unknown, or Ctrl-C came once the submit command
            # was under way (it may have submitted, or may still: a late original, a lookup cut short)
            interrupted = submitting and isinstance(exc, KeyboardInterrupt)
            if interrupted:
                log.warning("hpcbridge: interrupted while submitting; the job may have been submitted, so its folder "
                            "%s is kept (the job, if submitted, %s)", sub.folder,
                            backend.scheduler.find_by_tag_hint(sub.tag))
            elif not (submitting and isinstance(exc, TransportError) and exc.maybe_ran):
                with contextlib.suppress(Exception):
                    transport.remove_tree(sub.folder)
            raise
        self._submissions.append(sub)
        check_walltime(self.resources.walltime_s, sub.job_id)  # a notebook inside a job: does the job outlive it?
        if image is not None:
            for job in sub.all_jobs:
                job.image = image_label(image.record())
        backend.poller.add(sub)
        try:
            backend.registry.record(
                tag=sub.tag,
                site=sub.site,
                job_id=sub.job_id,
                folder=sub.folder,
                is_array=sub.is_array,
                chunks=sub.chunks,
                ranks=sub.ranks,
                function=qualname(fn),
                submit_time=sub.submit_time,
                task_ids=[sub.task_id(t) for t in range(len(sub.chunks))],
                container=None if image is None else json.dumps(image.record()),
            )
        except Exception as exc:  # the job is submitted and watched; only attach from elsewhere is lost
            log.warning("hpcbridge: job %s is running but could not be recorded in %s (attach will not find "
                        "it): %s", sub.job_id, backend.registry.path, exc)

    def _render_script(
        self, folder: str, tag: str, array_size: Optional[int], fn: Callable[..., Any], ncalls: int,
        container_binary: Optional[str] = None,
    ) -> str:
        """The batch script of a submission (``array_size``: None for a plain job; ``container_binary``: the
        container runtime's program that the image check found)."""
        site = self._backend.site
        cwd = self._start_dir()
        context = script_context(site, self._backend.scheduler, self.resources, folder=folder, tag=tag,
                                 array_size=array_size, fn=fn, ncalls=ncalls, cwd=cwd,
                                 container_binary=container_binary)
        user_dir = os.path.join(
            os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "hpcbridge", "templates"
        )
        return render_script(self._backend.scheduler, context, [user_dir, *site.templates])


def _start_dir_of(site: Site) -> Optional[str]:
    """Where a job starts: where the client is, on a login node (it shares the folder with the nodes), if that
    directory's name can stand in a directive; else None (the scheduler's default)."""
    cwd = os.getcwd() if site.transport == "local" else None
    return cwd if cwd is not None and SAFE_PATH.match(cwd) else None


def _resources(base: Resources, kwargs: Mapping[str, Any], site: Site) -> Resources:
    """``base`` with an executor's keywords applied: ``after=`` Jobs become the ids they stand for."""
    if "after" in kwargs:
        kwargs = {**kwargs, "after": dependency_ids(kwargs["after"], site, supports_after(site.scheduler))}
    return resources_from(base, kwargs, options=True)


def _new_tag() -> str:
    return uuid.uuid4().hex[:16]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "?"


