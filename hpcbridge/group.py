"""JobGroup: the list of jobs ``Executor.map_jobs`` returns, with group-wide helpers and a notebook display."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Dict, Iterable, List, Optional, Sequence, SupportsIndex, Tuple, Union, overload

from .display import jobs_html, state_counts
from .errors import HpcBridgeError
from .job import Job, TaskOwner
from .usage import Usage


class JobGroup(List[Job]):
    """A list of :class:`Job` (one per call, in call order) that also waits, cancels and displays as a group.

    It is a plain ``list`` otherwise: index it, slice it (a slice is a ``JobGroup`` too), iterate it.
    """

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        super().__init__(jobs)

    @overload
    def __getitem__(self, index: SupportsIndex) -> Job: ...

    @overload
    def __getitem__(self, index: slice) -> JobGroup: ...

    def __getitem__(self, index: Union[SupportsIndex, slice]) -> Union[Job, JobGroup]:
        if isinstance(index, slice):
            return JobGroup(super().__getitem__(index))
        return super().__getitem__(index)

    def results(self, timeout: Optional[float] = None) -> List[Any]:
        """Every job's result, in order; the first failure is raised (``timeout`` is for the whole group)."""
        done, not_done = concurrent.futures.wait(self, timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} of {len(self)} jobs not finished after {timeout} s")
        return [job.result() for job in self]

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until every job finished; True if they all did within ``timeout``."""
        return not concurrent.futures.wait(self, timeout).not_done

    def cancel(self) -> int:
        """Cancel every unfinished job on the cluster (one cancel command per array job); how many were live."""
        return cancel_jobs(self)

    def usage(self, timeout: Optional[float] = None) -> Usage:
        """The group's total (:meth:`hpcbridge.usage.Usage.total`; each job's usage in its ``jobs``): waits until
        every job finished, then gathers their figures with one scheduler command per submission."""
        done, not_done = concurrent.futures.wait(self, timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} of {len(self)} jobs not finished after {timeout} s")
        by_sub: Dict[int, Tuple[TaskOwner, List[int]]] = {}
        for job in self:
            if job._usage is None:
                by_sub.setdefault(id(job.submission), (job.submission, []))[1].append(job.task)
        for sub, tasks in by_sub.values():
            sub.usage_of(sorted(set(tasks)))
        return Usage.total(job.usage() for job in self)

    def states(self) -> Dict[str, int]:
        """How many jobs are in each state, e.g. ``{'COMPLETED': 8, 'RUNNING': 2}``."""
        return state_counts(self)

    def __repr__(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in self.states().items())
        return f"<JobGroup of {len(self)} job{'s' if len(self) != 1 else ''}{': ' + states if states else ''}>"

    def _repr_html_(self) -> str:
        return jobs_html(self)


def cancel_jobs(jobs: Sequence[Job]) -> int:
    """Cancel the unfinished ``jobs`` on the cluster, one cancel command per submission; how many were live.

    Every submission is tried; the first error is raised after the others were cancelled."""
    by_sub: Dict[int, Tuple[TaskOwner, List[int]]] = {}
    live = 0
    for job in jobs:
        if not job.done():
            live += 1
            by_sub.setdefault(id(job.submission), (job.submission, []))[1].append(job.task)
    first: Optional[HpcBridgeError] = None
    for sub, tasks in by_sub.values():
        try:
            sub.cancel_tasks(sorted(set(tasks)))
        except HpcBridgeError as exc:
            first = first or exc
    if first is not None:
        raise first
    return live
