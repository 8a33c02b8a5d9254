"""JobGroup: the list of jobs ``Executor.map_jobs`` returns, with group-wide helpers and a notebook display."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Dict, Iterable, List, Optional, SupportsIndex, Union, overload

from .job import Job


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
        by_sub: Dict[int, Any] = {}
        live = 0
        for job in self:
            if not job.done():
                live += 1
                sub = job._submission
                by_sub.setdefault(id(sub), (sub, set()))[1].add(job.task)
        for sub, tasks in by_sub.values():
            sub.cancel_tasks(sorted(tasks))
        return live

    def states(self) -> Dict[str, int]:
        """How many jobs are in each state, e.g. ``{'COMPLETED': 8, 'RUNNING': 2}``."""
        counts: Dict[str, int] = {}
        for job in self:
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        return counts

    def __repr__(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in self.states().items())
        return f"<JobGroup of {len(self)} job{'s' if len(self) != 1 else ''}{': ' + states if states else ''}>"

    def _repr_html_(self) -> str:
        from .display import jobs_html

        return jobs_html(self)
