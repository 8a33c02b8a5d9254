"""The usage of finished jobs, gathered: the scheduler's figures (one batched command per poll tick for the jobs
that newly finished: sacct, scontrol show job, qstat), the in-job sampler's summaries (one read for all ranks of
all those jobs) and the request (``meta.json``), put together by :func:`hpcbridge.usage.combine` and kept on the
:class:`~hpcbridge.job.Job` and in the registry (``job.usage()``, ``hpcbridge report``).

:class:`UsageGatherer` belongs to a :class:`~hpcbridge.poll.Poller`: the poller hands it each task it resolves and
calls :meth:`UsageGatherer.tick` once per tick; ``job.usage()`` calls :meth:`UsageGatherer.fetch`, which asks at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from .registry import Registry
from .schedulers.base import ClusterFacts, Scheduler
from .sites import Site
from .submission import Submission
from .transport.base import Completed, Transport
from .usage import Measured, RankUsage, Usage, combine, rank_usage, recomputed_of, requested, sampled

log = logging.getLogger("hpcbridge")

#: seconds between usage queries while jobs wait for their figures
EVERY_S = 2.0
#: how long after a task resolved the scheduler is asked for complete figures (slurmdbd may lag slurmctld; a job
#: that left squeue/qstat never gets any): then the sampler's figures serve alone
GIVE_UP_S = 60.0


class UsageHost(Protocol):
    """What the gatherer needs of its site at run time (:class:`hpcbridge.backend.Backend` is one)."""

    site: Site
    scheduler: Scheduler
    transport: Transport
    facts: ClusterFacts
    registry: Registry

    def run(self, argv: Sequence[str], timeout: Optional[float] = None) -> Completed: ...


class _Pending:
    __slots__ = ("sub", "task", "since", "measured")

    def __init__(self, sub: Submission, task: int, since: float) -> None:
        self.sub = sub
        self.task = task
        self.since = since
        self.measured: Optional[Measured] = None


class UsageGatherer:
    """Gathers the usage of the tasks its poller resolved (see the module's docstring)."""

    def __init__(self, host: UsageHost) -> None:
        self.host = host
        self._pending: Dict[Tuple[str, int], _Pending] = {}
        self._lock = threading.Lock()
        self._next = 0.0
        #: how many scheduler usage commands were run (one per tick at most from the poller)
        self.queries = 0

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def want(self, sub: Submission, task: int) -> None:
        """A task newly resolved: gather its figures on the next ticks."""
        if not sub.job_id or _kept(sub, task) is not None:  # never submitted (batch() cancelled), or gathered
            return
        with self._lock:
            self._pending.setdefault((sub.tag, task), _Pending(sub, task, time.monotonic()))

    def tick(self) -> None:
        """One batched scheduler command for every waiting task (at most every ``EVERY_S``), then the finished
        ones' sampler summaries in one read."""
        now = time.monotonic()
        with self._lock:
            if not self._pending or now < self._next:
                return
            self._next = now + EVERY_S
            waiting = list(self._pending.values())
        ready = self._ask(waiting, give_up=False)
        self._finish(ready)
        with self._lock:  # after the jobs have their usage: fetch() waits for pending ones
            for p in ready:
                self._pending.pop((p.sub.tag, p.task), None)

    def fetch(self, sub: Submission, tasks: Sequence[int], patience_s: float = 30.0) -> Dict[int, Usage]:
        """The usage of ``tasks`` of a finished submission now (``job.usage()``): what is kept, else the registry's,
        else asked (again every second for up to ``patience_s`` while the scheduler's figures are incomplete)."""
        out: Dict[int, Usage] = {}
        todo: List[int] = []
        for task in tasks:
            kept = _kept(sub, task)
            if kept is None:
                kept = self._stored(sub, task)
            if kept is not None:
                out[task] = kept
            else:
                todo.append(task)
        # the poller is gathering some of them already: wait for it rather than ask twice
        deadline = time.monotonic() + GIVE_UP_S + patience_s
        while time.monotonic() < deadline:
            with self._lock:
                theirs = [t for t in todo if (sub.tag, t) in self._pending and _kept(sub, t) is None]
            if not theirs:
                break
            time.sleep(0.1)
        for task in list(todo):
            kept = _kept(sub, task)
            if kept is not None:
                out[task] = kept
                todo.remove(task)
        if not todo:
            return out
        sub.usage_wanted.update(todo)  # asked here: the poller leaves them alone
        waiting = [_Pending(sub, t, time.monotonic()) for t in todo]
        deadline = time.monotonic() + patience_s
        ready: List[_Pending] = []
        while waiting:
            last = time.monotonic() >= deadline
            got = self._ask(waiting, give_up=last)
            ready.extend(got)
            waiting = [p for p in waiting if p not in got]
            if waiting:
                time.sleep(1.0)
        self._finish(ready)
        with self._lock:
            for p in ready:
                self._pending.pop((sub.tag, p.task), None)
        for task in todo:
            kept = _kept(sub, task)
            if kept is not None:
                out[task] = kept
        return out

    # -- steps ------------------------------------------------------------------------------------------------
    def _ask(self, waiting: List[_Pending], give_up: bool) -> List[_Pending]:
        """One scheduler command for ``waiting``; those whose figures are complete (or given up on) are returned."""
        host = self.host
        ids = sorted({p.sub.job_id for p in waiting})
        since = min(p.sub.submit_time for p in waiting)
        argv = host.scheduler.usage_argv(ids, since, time.time(), host.facts)
        answer: Dict[str, Tuple[Measured, bool]] = {}
        if argv is not None:
            self.queries += 1
            try:
                out = host.run(argv, timeout=30)
                answer = host.scheduler.parse_usage(out, host.facts)
            except Exception as exc:  # figures are a courtesy: retried next tick
                log.warning("hpcbridge: usage query failed, will retry: %s", exc)
        now = time.monotonic()
        ready = []
        for p in waiting:
            got = answer.get(p.sub.task_id(p.task))
            if got is not None:
                p.measured = got[0]
            if argv is None or (got is not None and got[1]) or give_up or now - p.since > GIVE_UP_S:
                ready.append(p)
        return ready

    def _finish(self, ready: List[_Pending]) -> None:
        """Read the sampler summaries and requests of ``ready`` in one round trip; set each job's usage; store."""
        if not ready:
            return
        paths: List[str] = []
        for p in ready:
            paths.append(p.sub.paths.meta)
            paths.extend(p.sub.paths.usage(p.task, r) for r in range(p.sub.ranks))
        try:
            files = self.host.transport.read_files(sorted(set(paths)))
        except Exception as exc:
            log.warning("hpcbridge: could not read the jobs' usage summaries: %s", exc)
            files = {}
        rows: List[Tuple[str, int, str]] = []
        for p in ready:
            usage = build(p, files)
            for job in p.sub.jobs[p.task]:
                job._usage = usage
                rows.append((job.job_id, job.position, usage.to_json()))
        try:
            self.host.registry.store_usage(self.host.site.name, rows)
        except Exception as exc:  # the registry is a convenience
            log.warning("hpcbridge: could not store usage in the job registry: %s", exc)

    def _stored(self, sub: Submission, task: int) -> Optional[Usage]:
        jobs = sub.jobs[task]
        try:
            text = self.host.registry.usage(self.host.site.name, jobs[0].job_id, jobs[0].position)
        except Exception:
            return None
        if text is None:
            return None
        usage = Usage.from_json(text)
        for job in jobs:
            job._usage = usage
        return usage


def _kept(sub: Submission, task: int) -> Optional[Usage]:
    return sub.jobs[task][0]._usage


def _json(data: Optional[bytes]) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return None


def build(p: _Pending, files: Dict[str, bytes]) -> Usage:
    """One task's :class:`Usage` from the scheduler's figures, its ranks' summaries and its request."""
    sub, task = p.sub, p.task
    ranks: List[RankUsage] = []
    notes: List[str] = []
    for r in range(sub.ranks):
        summary = _json(files.get(sub.paths.usage(task, r)))
        if isinstance(summary, dict):
            ranks.append(rank_usage(summary))
            notes.extend(n for n in summary.get("notes", []) if n not in notes)
    meta = _json(files.get(sub.paths.meta)) or {}
    resources = meta.get("resources") if isinstance(meta, dict) else None
    sources = [m for m in (p.measured, sampled(ranks)) if m is not None]
    if isinstance(resources, dict):
        sources.append(requested(resources))
    if not ranks:
        notes.append("no sampler summary (the job did not start, or was killed before its first write)")
    state = (p.measured.state if p.measured is not None else "") or sub.jobs[task][0].state.value
    runs = sub.jobs[task][0].attempts  # requeue on: read before the task resolved (docs/requeue.md)
    recomputed = recomputed_of([a.recomputed_s for a in runs]) if len(runs) > 1 else None
    return combine(sub.task_id(task), state, sources, ranks, notes, recomputed)
