"""``hpcbridge.suggest`` and ``Executor(right_size=True)``: the advice (:mod:`hpcbridge.advice`) fed with the usage of
jobs, of a function's history in the registry, or of both.

``suggest(job)``, ``suggest(jobs)`` (a ``JobGroup`` or any list of jobs) and ``suggest(fn)`` (the registry's finished
runs of that function, on every site or on ``site``) return an :class:`~hpcbridge.advice.Advice`: the resource
keywords to change and the arithmetic behind each. ``right_sized`` is what an executor asks before it submits a
function's first job: the same advice, against the executor's own request.
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .advice import Advice, Asked, advise
from .errors import HpcBridgeError
from .pickling import qualname
from .registry import Registry
from .spec import Resources
from .state import JobState
from .usage import Usage

log = logging.getLogger("hpcbridge")

#: how many of a function's most recent finished runs the history reads
HISTORY = 20


def suggest(what: Any, *, site: Optional[str] = None, timeout: Optional[float] = 300) -> Advice:
    """What the next run should ask for, with the arithmetic.

    ``what``: a :class:`~hpcbridge.job.Job`, a list of them (a ``JobGroup``), or a function (its finished runs in
    this machine's registry, on ``site`` or on every site). Jobs still running are waited for (``timeout``).
    """
    if callable(what) and not hasattr(what, "job_id"):
        name = qualname(what)
        return advise([u for _, u in history(name, site)], function=name)
    jobs = [what] if hasattr(what, "job_id") else list(what)
    if not jobs or not all(hasattr(j, "job_id") and hasattr(j, "usage") for j in jobs):
        from .errors import UsageError

        raise UsageError(f"suggest() takes a Job, a list of Jobs or a function, not {type(what).__name__}")
    concurrent.futures.wait(jobs, timeout)
    usages = _job_usages(jobs)
    names = sorted({str(getattr(j, "function", "") or "") for j in jobs} - {""})
    return advise(usages, function=", ".join(names))


def _job_usages(jobs: Sequence[Any]) -> List[Usage]:
    """The usage of each job that has one (a group's in one query when the group can give it)."""
    from .group import JobGroup

    group = JobGroup(jobs)
    got = group.usage() if hasattr(group, "usage") else [j.usage() for j in jobs]
    out: List[Usage] = list(getattr(got, "jobs", got)) if not isinstance(got, list) else got
    return [u for u in out if u is not None]


def history(function: str, site: Optional[str] = None, limit: int = HISTORY,
            registry: Optional[Registry] = None) -> List[Tuple[Dict[str, Any], Usage]]:
    """The registry's most recent finished runs of ``function`` (its qualified name), oldest first, each with its
    usage: ``(registry row, usage)``; runs without usage figures are left out."""
    registry = registry or Registry()
    rows = [r for r in registry.jobs(site, limit=100_000) if r["function"] == function
            and _final(r["last_state"])][:limit]
    return list(reversed(usages_of_rows(rows, registry)))


def _final(state: str) -> bool:
    try:
        return JobState(state).is_final
    except ValueError:
        return False


def usages_of_rows(rows: Sequence[Dict[str, Any]], registry: Optional[Registry] = None
                   ) -> List[Tuple[Dict[str, Any], Usage]]:
    """The usage of each registry row that has one (rows without figures are left out)."""
    from .attaching import attach

    out: List[Tuple[Dict[str, Any], Usage]] = []
    for row in rows:
        try:
            job = attach(row["job_id"], row["site"], row["position"])
            usage = job.usage()  # type: ignore[attr-defined]
        except HpcBridgeError as exc:
            log.info("hpcbridge: no usage for job %s: %s", row["job_id"], exc)
            continue
        if usage is not None:
            out.append((row, usage))
    return out


def asked_from(res: Resources) -> Asked:
    """An executor's request as the advice reads it."""
    return Asked(cpus_per_task=res.cpus_per_task, mem_gb=res.mem_gb, walltime_s=res.walltime_s,
                 gpus_per_node=res.gpus_per_node, tasks=res.tasks_per_node, nodes=res.nodes)


def right_sized(site: str, res: Resources, function: str,
                runs: Optional[Iterable[Usage]] = None) -> Tuple[Advice, str]:
    """The advice for ``function``'s next jobs against the request ``res``, and the line that says what changes
    (empty when nothing does)."""
    if runs is None:
        runs = [u for _, u in history(function, site)]
    advice = advise(runs, asked_from(res), function)
    if not advice.changes:
        return advice, ""
    what = "; ".join(c.why for c in advice.changes)
    return advice, (f"hpcbridge: right_size: {function} on {site}, from {advice.runs} earlier "
                    f"run{'s' if advice.runs != 1 else ''}: {what}")


def describe_fn(fn: Union[Callable[..., Any], Any]) -> str:
    return qualname(fn)
