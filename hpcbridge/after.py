"""``after=``: the jobs a submission waits for, as the scheduler job ids its directives name.

Resolved when an executor is made (before anything is submitted), so that a job that can never start (its
parent failed, or was never submitted) is refused with the reason instead of waiting in the queue for ever; and
looked up just before each submission (:func:`check_known`), so that a job id the scheduler does not know is
refused instead of being taken for a job long done.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple

from .backend import Backend
from .errors import ResourceError, TransportError
from .job import Job, TaskOwner
from .sites import Site
from .spec import JOB_ID
from .state import JobState

log = logging.getLogger("hpcbridge")


def dependency_ids(value: Any, site: Site, supported: bool) -> Tuple[str, ...]:
    """``after=``: hpcbridge Jobs and scheduler job ids -> the ids the job waits for (checked, in order).

    ``supported``: whether the site's scheduler has job dependencies. A set of Jobs that is every task of one array
    job becomes that array's id (the scheduler waits for all of it); other Jobs their own (task) ids. A Job that
    already completed is left out (it is satisfied, and the scheduler may have forgotten it); one that failed or
    was cancelled is an error: the job would never run.
    """
    if value is None:
        return ()
    items = [value] if isinstance(value, (Job, str, int)) else value
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise ResourceError(
            f"after={value!r} must be a Job, a job id ('12345') or a list of them (e.g. after=jobs from map_jobs)"
        )
    if items and not supported:
        raise ResourceError(
            f"after= needs a Slurm or PBS site; site {site.name!r} ({site.scheduler}) has no job "
            "dependencies: wait for the jobs' results (job.result()) before submitting"
        )
    ids: List[str] = []
    arrays: Dict[int, Tuple[TaskOwner, List[Job]]] = {}  # submission id -> (submission, its jobs named here)
    for item in items:
        if isinstance(item, Job):
            _check_parent(item, site)
            arrays.setdefault(id(item.submission), (item.submission, []))[1].append(item)
        elif isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            ids.append(str(item))
        elif isinstance(item, str) and JOB_ID.match(item):
            ids.append(item)
        else:
            raise ResourceError(
                f"after: {item!r} ({type(item).__name__}) is neither an hpcbridge Job nor a job id such as "
                "'12345', '12345_3' (Slurm) or '12345.server', '12345[].server' (PBS)"
            )
    for sub, jobs in arrays.values():
        waiting = sorted({job.task for job in jobs if not job.done()})  # done ones completed (_check_parent)
        if not waiting:
            continue  # nothing left to wait for
        if sub.is_array and {job.task for job in jobs} == set(range(len(sub.chunks))):
            ids.append(sub.job_id)  # every task of the array: its own id
        else:
            ids.extend(sub.task_id(t) for t in waiting)
    return tuple(dict.fromkeys(ids))


def _check_parent(job: Job, site: Site) -> None:
    """A Job ``after=`` can wait for: submitted, on the same site, not failed or cancelled."""
    if not job.submission.job_id:
        raise ResourceError(
            f"after: {job!r} is not submitted yet (executor.batch() submits its jobs when the block ends); "
            "give after= outside the batch() block"
        )
    if job.site != site.name:
        raise ResourceError(
            f"after: job {job.job_id} runs on site {job.site!r}, not {site.name!r}: a scheduler waits only for its "
            "own jobs"
        )
    if job.done() and (job.cancelled() or job.exception() is not None):
        why = "was cancelled" if job.cancelled() else f"failed ({job.state.value})"
        raise ResourceError(f"after: job {job.job_id} {why}: a job to run after it would never start")


def check_known(backend: Backend, job_ids: Sequence[str]) -> None:
    """Before a submission that waits for ``job_ids``: the site's scheduler knows each of them, and each that it no
    longer holds completed successfully. A ResourceError otherwise, before anything is written or submitted.

    Slurm takes a dependency on a job it does not hold for one long done and starts the dependent at once, so a
    mistyped id, or one whose job failed and was forgotten, would not make the job wait. The adapter's lookup
    commands say which jobs the scheduler holds (fine, whatever their state: it waits for them and handles their
    outcome) and what its records say of the others. A lookup that fails is logged, and the job is submitted
    without this check (as before it existed), so a flaky query never blocks a submission.
    """
    queries = backend.scheduler.lookup_queries(job_ids, backend.facts) if job_ids else []
    missing = list(job_ids)
    forgotten: Dict[str, JobState] = {}
    for i, argv in enumerate(queries):
        try:
            out = backend.run(argv, timeout=30)
        except TransportError as exc:
            found, why = None, str(exc)
        else:
            found = backend.scheduler.parse_lookup(missing, out)
            why = f"{out.argv[0]} exited {out.returncode}: {out.stderr.strip()[-200:]}"
        if found is None:
            log.warning("hpcbridge: could not look up the jobs named in after= (%s); submitting without that check",
                        why)
            return
        if i > 0:
            forgotten.update(found)
        missing = [job_id for job_id in missing if job_id not in found]
        if not missing:
            break
    if queries and missing:
        what = f"job {missing[0]}" if len(missing) == 1 else f"jobs {', '.join(missing)}"
        raise ResourceError(
            f"after: the scheduler of site {backend.site.name!r} does not know {what}: check the id (a job that "
            "completed long ago and was forgotten needs no after=)"
        )
    for job_id, state in forgotten.items():
        if state.is_final and state is not JobState.COMPLETED:
            why = "was cancelled" if state is JobState.CANCELLED else f"failed ({state.value})"
            raise ResourceError(f"after: job {job_id} {why}: a job to run after it would never start")
