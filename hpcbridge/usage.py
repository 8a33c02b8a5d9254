"""What a job was given against what it used: :class:`Usage` (``job.usage()``), :class:`RankUsage` (one rank's
in-job sample), the sum of a group (:meth:`Usage.total`), and :func:`combine`, which puts the scheduler's figures,
the in-job sampler's and the request together, saying where each figure came from.

Pure data and arithmetic, standard library only (the worker's sampler and the adapters read it).

Sources (``Usage.sources``: figure -> source):

- ``"accounting"``: Slurm's accounting (sacct), read once per finished job by the poller;
- ``"scontrol"``: Slurm without accounting, ``scontrol show job`` while slurmctld still holds the job;
- ``"pbs"``: PBS ``qstat -f`` ``resources_used.*``;
- ``"sampler"``: the in-job sampler (each rank's CPU time and peak RSS, its own and its children's; NVML);
- ``"request"``: what the job asked for (its ``meta.json``), when the scheduler did not say what it allocated.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: the figures ``sources`` may name
FIGURES = (
    "nodes", "cpus", "mem_gb", "walltime_s", "gpus", "elapsed_s", "queue_wait_s", "cpu_time_s", "peak_mem_gb",
    "gpu_utilization", "gpu_mem_peak_gb", "runs", "earlier_core_s", "earlier_gpu_s",
)
NO_NVML = "no GPU data (NVML not available)"
NO_GPU = "no GPU data (no GPU visible to the job)"
GIB = float(1 << 30)


@dataclasses.dataclass(frozen=True)
class RankUsage:
    """One rank's figures from the in-job sampler (None: not measured)."""

    node: str
    rank: int
    cpu_time_s: Optional[float]
    peak_rss_gb: Optional[float]
    gpu_utilization: Optional[float] = None  # mean over samples and the rank's GPUs, 0..1
    gpu_mem_peak_gb: Optional[float] = None  # the largest device memory in use on one of its GPUs
    #: the worker's own start and end (epoch seconds, the node's clock); the end of a job killed before its end:
    #: the last periodic summary
    started: Optional[float] = None
    finished: Optional[float] = None
    #: the sampler thread's own CPU time (its cost)
    sampler_cpu_s: Optional[float] = None


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _sum(values: Iterable[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max(values: Iterable[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return max(known) if known else None


@dataclasses.dataclass(frozen=True)
class Usage:
    """What a job (or, from :meth:`total`, a group of jobs) was given and what it used.

    ``mem_gb``: allocated memory, total over nodes; ``peak_mem_gb``: the largest peak of one node (accounting: of
    one step's node; sampler: the ranks on one node summed), so ``mem_efficiency`` compares it with the memory of
    one node (``mem_gb / nodes``, what Slurm's ``--mem`` asks). ``cpus``: allocated cores in total.

    A job that requeue restarted (docs/requeue.md) ran ``runs`` times: ``elapsed_s`` is its last run's, the runs
    before it held ``earlier_core_s`` core-seconds (``earlier_gpu_s`` GPU-seconds), counted in the hours
    allocated; ``cpu_time_s`` sums every run. ``recomputed_core_s``: the core-seconds the runs after an
    interruption computed again (each interrupted run's work after its last checkpoint, ``job.attempts``'
    ``recomputed_s``), None when not known.
    """

    job_id: str
    state: str
    nodes: int
    cpus: int
    mem_gb: Optional[float]
    walltime_s: Optional[float]
    gpus: int
    elapsed_s: Optional[float]
    queue_wait_s: Optional[float]
    cpu_time_s: Optional[float]
    peak_mem_gb: Optional[float]
    gpu_utilization: Optional[float]
    gpu_mem_peak_gb: Optional[float]
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ranks: Tuple[RankUsage, ...] = ()
    notes: Tuple[str, ...] = ()
    #: the members of a total (:meth:`total`); empty for one job
    jobs: Tuple[Usage, ...] = ()
    runs: int = 1
    earlier_core_s: float = 0.0
    earlier_gpu_s: float = 0.0
    recomputed_core_s: Optional[float] = None

    # -- efficiencies ---------------------------------------------------------------------------------------
    @property
    def cpu_efficiency(self) -> Optional[float]:
        """CPU time / (cores x elapsed): 1.0 is every allocated core busy all the time."""
        return _ratio(self.core_hours_used, self.core_hours_allocated)

    @property
    def mem_efficiency(self) -> Optional[float]:
        """The peak of one node against the memory of one node (a total: node-weighted over its jobs)."""
        if self.jobs:
            pairs = [(j.peak_mem_gb * j.nodes, j.mem_gb) for j in self.jobs
                     if j.peak_mem_gb is not None and j.mem_gb and j.nodes]
            return _ratio(sum(p for p, _ in pairs), sum(m for _, m in pairs)) if pairs else None
        if self.mem_gb is None or not self.nodes:
            return None
        return _ratio(self.peak_mem_gb, self.mem_gb / self.nodes)

    @property
    def time_efficiency(self) -> Optional[float]:
        """Elapsed / walltime asked (a total: summed over the jobs that have both)."""
        if self.jobs:
            pairs = [(j.elapsed_s, j.walltime_s) for j in self.jobs if j.elapsed_s is not None and j.walltime_s]
            return _ratio(sum(e for e, _ in pairs), sum(w for _, w in pairs)) if pairs else None
        return _ratio(self.elapsed_s, self.walltime_s)

    # -- hours ----------------------------------------------------------------------------------------------
    @property
    def core_hours_allocated(self) -> Optional[float]:
        if self.jobs:
            return _sum(j.core_hours_allocated for j in self.jobs)
        return None if self.elapsed_s is None else (self.cpus * self.elapsed_s + self.earlier_core_s) / 3600

    @property
    def core_hours_used(self) -> Optional[float]:
        if self.jobs:
            return _sum(j.core_hours_used for j in self.jobs)
        return None if self.cpu_time_s is None else self.cpu_time_s / 3600

    @property
    def core_hours_wasted(self) -> Optional[float]:
        """Allocated and not used (never below 0)."""
        if self.jobs:
            return _sum(j.core_hours_wasted for j in self.jobs)
        alloc, used = self.core_hours_allocated, self.core_hours_used
        if alloc is None or used is None:
            return None
        return max(0.0, alloc - used)

    @property
    def gpu_hours_allocated(self) -> Optional[float]:
        if self.jobs:
            return _sum(j.gpu_hours_allocated for j in self.jobs)
        return None if self.elapsed_s is None else (self.gpus * self.elapsed_s + self.earlier_gpu_s) / 3600

    @property
    def core_hours_recomputed(self) -> Optional[float]:
        """The core-hours that runs after an interruption computed again (requeue, docs/requeue.md): wasted too,
        though busy. 0 for a job that ran once; None when not known."""
        if self.jobs:
            return _sum(j.core_hours_recomputed for j in self.jobs)
        if self.recomputed_core_s is None:
            return 0.0 if self.runs <= 1 else None
        return self.recomputed_core_s / 3600

    @property
    def gpu_hours_used(self) -> Optional[float]:
        """GPU-hours allocated x utilisation (None without GPU data)."""
        if self.jobs:
            return _sum(j.gpu_hours_used for j in self.jobs)
        alloc = self.gpu_hours_allocated
        return None if alloc is None or self.gpu_utilization is None else alloc * self.gpu_utilization

    # -- a group --------------------------------------------------------------------------------------------
    @classmethod
    def total(cls, usages: Iterable[Usage]) -> Usage:
        """The sum of a group (``JobGroup.usage()``): allocations, times and CPU time summed, peaks the largest;
        the efficiencies and hours are computed over the members (``jobs``). ``state``: the one state of all, or
        ``"MIXED"``."""
        members = tuple(usages)
        states = sorted({u.state for u in members})
        gpu_alloc = [(u.gpu_hours_allocated or 0.0, u.gpu_utilization) for u in members
                     if u.gpu_utilization is not None and u.gpu_hours_allocated]
        gpu_util = (sum(h * (g or 0.0) for h, g in gpu_alloc) / sum(h for h, _ in gpu_alloc)) if gpu_alloc else None
        notes: List[str] = []
        for u in members:
            notes.extend(n for n in u.notes if n not in notes)
        sources: Dict[str, str] = {}
        for u in members:
            for k, v in u.sources.items():
                sources[k] = v if sources.get(k, v) == v else "mixed"
        return cls(
            job_id=",".join(u.job_id for u in members),
            state=states[0] if len(states) == 1 else ("MIXED" if states else "NONE"),
            nodes=sum(u.nodes for u in members),
            cpus=sum(u.cpus for u in members),
            mem_gb=_sum(u.mem_gb for u in members),
            walltime_s=_sum(u.walltime_s for u in members),
            gpus=sum(u.gpus for u in members),
            elapsed_s=_sum(u.elapsed_s for u in members),
            queue_wait_s=_sum(u.queue_wait_s for u in members),
            cpu_time_s=_sum(u.cpu_time_s for u in members),
            peak_mem_gb=_max(u.peak_mem_gb for u in members),
            gpu_utilization=gpu_util,
            gpu_mem_peak_gb=_max(u.gpu_mem_peak_gb for u in members),
            sources=sources,
            ranks=(),
            notes=tuple(notes),
            jobs=members,
            runs=sum(u.runs for u in members),
            earlier_core_s=sum(u.earlier_core_s for u in members),
            earlier_gpu_s=sum(u.earlier_gpu_s for u in members),
            recomputed_core_s=_sum(u.recomputed_core_s for u in members),
        )

    # -- storage --------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The usage as JSON (the registry keeps it; :meth:`from_json` reads it back)."""
        data = dataclasses.asdict(self)
        data["sources"] = dict(self.sources)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Usage:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        rank_known = {f.name for f in dataclasses.fields(RankUsage)}
        fields["ranks"] = tuple(RankUsage(**{k: v for k, v in r.items() if k in rank_known})
                                for r in data.get("ranks", ()))
        fields["notes"] = tuple(data.get("notes", ()))
        fields["sources"] = dict(data.get("sources", {}))
        fields["jobs"] = tuple(cls.from_dict(j) for j in data.get("jobs", ()))
        return cls(**fields)

    def __str__(self) -> str:
        def pct(x: Optional[float]) -> str:
            return "-" if x is None else f"{100 * x:.0f}%"

        return (f"job {self.job_id} {self.state}: {self.cpus} cpu(s) {pct(self.cpu_efficiency)} busy, "
                f"peak {_gb(self.peak_mem_gb)} of {_gb(self.mem_gb)} ({pct(self.mem_efficiency)}), "
                f"{_secs(self.elapsed_s)} of {_secs(self.walltime_s)} ({pct(self.time_efficiency)})")


def _gb(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f} GB"


def _secs(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.0f} s"


# -- putting the sources together ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Measured:
    """What one source said about a job: any figure of :data:`FIGURES` it knows (None: it does not say), and
    notes (e.g. "TotalCPU may miss children's CPU time: the step was killed")."""

    source: str
    figures: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    state: str = ""
    notes: Tuple[str, ...] = ()


def rank_usage(summary: Mapping[str, Any]) -> RankUsage:
    """A rank's sampler summary (the JSON the worker writes, :mod:`hpcbridge.sampler`) as a :class:`RankUsage`."""
    gpu = summary.get("gpu") or {}
    mem = gpu.get("mem_peak_bytes")
    return RankUsage(
        node=str(summary.get("node", "")),
        rank=int(summary.get("rank", 0)),
        cpu_time_s=_float(summary.get("cpu_time_s")),
        peak_rss_gb=None if summary.get("peak_rss_bytes") is None else float(summary["peak_rss_bytes"]) / GIB,
        gpu_utilization=_float(gpu.get("utilization_mean")),
        gpu_mem_peak_gb=None if mem is None else float(mem) / GIB,
        started=_float(summary.get("started")),
        finished=_float(summary.get("finished")),
        sampler_cpu_s=_float(summary.get("sampler_cpu_s")),
    )


def _float(x: Any) -> Optional[float]:
    return None if x is None else float(x)


def sampled(ranks: Sequence[RankUsage]) -> Measured:
    """The sampler's figures of a job from its ranks: CPU time summed, the peak of the busiest node (its ranks'
    peaks summed), elapsed from the first start to the last end, GPU utilisation averaged."""
    if not ranks:
        return Measured("sampler")
    by_node: Dict[str, float] = {}
    for r in ranks:
        if r.peak_rss_gb is not None:
            by_node[r.node] = by_node.get(r.node, 0.0) + r.peak_rss_gb
    starts = [r.started for r in ranks if r.started is not None]
    ends = [r.finished for r in ranks if r.finished is not None]
    utils = [r.gpu_utilization for r in ranks if r.gpu_utilization is not None]
    figures: Dict[str, Any] = {
        "cpu_time_s": _sum(r.cpu_time_s for r in ranks),
        "peak_mem_gb": max(by_node.values()) if by_node else None,
        "elapsed_s": (max(ends) - min(starts)) if starts and ends else None,
        "gpu_utilization": sum(utils) / len(utils) if utils else None,
        "gpu_mem_peak_gb": _max(r.gpu_mem_peak_gb for r in ranks),
    }
    return Measured("sampler", {k: v for k, v in figures.items() if v is not None})


def combine(job_id: str, state: str, sources: Sequence[Measured], ranks: Sequence[RankUsage] = (),
            notes: Sequence[str] = (), recomputed_core_s: Optional[float] = None) -> Usage:
    """A job's :class:`Usage`: each figure from the first source (in the order given) that knows it;
    ``recomputed_core_s``: its runs' work recomputed after interruptions (:func:`recomputed_of`)."""
    values: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    all_notes: List[str] = []
    for measured in sources:
        for name in FIGURES:
            value = measured.figures.get(name)
            if value is not None and name not in values:
                values[name] = value
                origin[name] = measured.source
        state = state or measured.state
        all_notes.extend(n for n in measured.notes if n not in all_notes)
    all_notes.extend(n for n in notes if n not in all_notes)
    return Usage(
        job_id=job_id,
        state=state or "UNKNOWN",
        nodes=int(values.get("nodes", 1)),
        cpus=int(values.get("cpus", 1)),
        mem_gb=_float(values.get("mem_gb")),
        walltime_s=_float(values.get("walltime_s")),
        gpus=int(values.get("gpus", 0)),
        elapsed_s=_float(values.get("elapsed_s")),
        queue_wait_s=_float(values.get("queue_wait_s")),
        cpu_time_s=_float(values.get("cpu_time_s")),
        peak_mem_gb=_float(values.get("peak_mem_gb")),
        gpu_utilization=_float(values.get("gpu_utilization")),
        gpu_mem_peak_gb=_float(values.get("gpu_mem_peak_gb")),
        sources=origin,
        ranks=tuple(sorted(ranks, key=lambda r: r.rank)),
        notes=tuple(all_notes),
        runs=int(values.get("runs", 1)),
        earlier_core_s=float(values.get("earlier_core_s", 0.0)),
        earlier_gpu_s=float(values.get("earlier_gpu_s", 0.0)),
        recomputed_core_s=recomputed_core_s,
    )


def recomputed_of(recomputed_s: Sequence[Optional[float]]) -> Optional[float]:
    """The core-seconds a job's runs recomputed (each run's ``Attempt.recomputed_s``): their sum; None when a run
    that was followed by another is not measured, or there are no runs."""
    if not recomputed_s or any(r is None for r in recomputed_s):
        return None
    return sum(r or 0.0 for r in recomputed_s)


def requested(resources: Mapping[str, Any]) -> Measured:
    """What a job asked for (``meta.json``'s ``resources``, as :class:`hpcbridge.spec.Resources` fields)."""
    nodes = int(resources.get("nodes") or 1)
    tasks = int(resources.get("tasks_per_node") or 1)
    cpus = int(resources.get("cpus_per_task") or 1)
    mem = resources.get("mem_gb")
    figures = {
        "nodes": nodes,
        "cpus": nodes * tasks * cpus,
        "mem_gb": None if mem is None else float(mem) * nodes,
        "walltime_s": resources.get("walltime_s"),
        "gpus": nodes * int(resources.get("gpus_per_node") or 0),
    }
    return Measured("request", {k: v for k, v in figures.items() if v is not None})
