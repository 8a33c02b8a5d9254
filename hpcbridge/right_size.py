"""``hpcbridge.suggest`` and ``Executor(right_size=True)``: the advice (:mod:`hpcbridge.advice`) fed with the usage of
jobs, of a function's history in the registry, or of both.

``suggest(job)``, ``suggest(jobs)`` (a ``JobGroup`` or any list of jobs) and ``suggest(fn)`` (the registry's finished
runs of that function, on every site or on ``site``) return an :class:`~hpcbridge.advice.Advice`: the resource
keywords to change and the arithmetic behind each. ``right_sized`` is what an executor asks before it submits a
function's first job: the same advice, against the executor's own request.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .advice import Advice, Asked, advise
from .errors import HpcBridgeError, UsageError
from .pickling import qualname
from .registry import Registry
from .spec import Resources
from .usage import Usage

log = logging.getLogger("hpcbridge")

#: how many of a function's most recent finished runs the history reads
HISTORY = 20


def suggest(what: Any, *, site: Optional[str] = None, timeout: Optional[float] = 300) -> Advice:
    """What the next run should ask for, with the arithmetic.

    ``what``: a :class:`~hpcbridge.job.Job`, a list of them (a ``JobGroup``), or a function (its finished runs in
    this machine's registry, on ``site`` or on every site). Jobs still running are waited for (``timeout``).
    """
    from .group import JobGroup
    from .job import Job

    if isinstance(what, Job):
        return advise([what.usage(timeout)], function=_function_of([what]))
    if isinstance(what, (list, tuple)) and what and all(isinstance(j, Job) for j in what):
        return advise(JobGroup(what).usage(timeout).jobs, function=_function_of(what))
    if callable(what):
        name = qualname(what)
        return advise([u for _, u in history(name, site)], function=name)
    raise UsageError(f"suggest() takes a Job, a list of Jobs (a JobGroup) or a function, not {what!r:.80}")


def _function_of(jobs: Sequence[Any]) -> str:
    """The function the jobs ran (from the registry), or '' when they ran several or it is not known."""
    registry = Registry()
    names: Set[str] = set()
    for job in jobs:
        rows = registry.find(job.site, job.job_id)
        names.update(r["function"] for r in rows if r["position"] == job.position)
    return names.pop() if len(names) == 1 else ""


def history(function: str, site: Optional[str] = None, limit: int = HISTORY,
            registry: Optional[Registry] = None) -> List[Tuple[Dict[str, Any], Usage]]:
    """The registry's most recent runs of ``function`` (its qualified name) with a stored usage, oldest first:
    ``(registry row, usage)``. A run's usage is stored once it was gathered (the poller does after the job ended,
    while the process that submitted it runs; ``job.usage()`` and ``hpcbridge report`` too)."""
    rows = one_per_task(r for r in (registry or Registry()).usages(site) if r["function"] == function)[:limit]
    return [(r, Usage.from_json(r["usage"])) for r in reversed(rows)]


def one_per_task(rows: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The first row of each task: calls bundled in one task (``chunksize``) share its allocation and usage."""
    seen: Set[Tuple[str, str]] = set()
    out = []
    for row in rows:
        if (row["site"], row["job_id"]) not in seen:
            seen.add((row["site"], row["job_id"]))
            out.append(row)
    return out


def usages_of_rows(rows: Sequence[Dict[str, Any]], registry: Optional[Registry] = None, timeout: float = 120
                   ) -> List[Tuple[Dict[str, Any], Usage]]:
    """The usage of each registry row: the stored one, else gathered now (the job attached, ``job.usage()``, which
    stores it); rows for which none can be had are left out (logged)."""
    from .attaching import attach

    registry = registry or Registry()
    out: List[Tuple[Dict[str, Any], Usage]] = []
    for row in rows:
        stored = registry.usage(row["site"], row["job_id"], row["position"])
        if stored is not None:
            out.append((row, Usage.from_json(stored)))
            continue
        try:
            out.append((row, attach(row["job_id"], row["site"], row["position"]).usage(timeout)))
        except (HpcBridgeError, TimeoutError) as exc:
            log.info("hpcbridge: no usage for job %s: %s", row["job_id"], exc)
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
