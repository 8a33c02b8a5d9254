"""Partition limits: a partition's maxima, and whether a resource request fits them (pure).

The Executor checks a request here before anything is written or submitted, so a job the scheduler would reject
fails early with the partitions that would take it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional, Tuple

from ..errors import ResourceError
from ..spec import Resources, did_you_mean, parse_walltime


@dataclasses.dataclass(frozen=True)
class Partition:
    """Limits of one partition (queue); None means not limited by the site-config."""

    name: str
    max_nodes: Optional[int] = None
    cpus_per_node: Optional[int] = None
    mem_gb_per_node: Optional[float] = None
    gpus_per_node: Optional[int] = None
    gpu_type: str = ""
    max_walltime: Optional[str] = None
    default: bool = False
    description: str = ""
    #: False: the site-config forbids requeued jobs here (requeue=N is refused)
    requeue: bool = True

    @property
    def max_walltime_s(self) -> Optional[int]:
        return None if self.max_walltime is None else parse_walltime(self.max_walltime)


def default_partition(partitions: Mapping[str, Partition]) -> Optional[str]:
    """The partition marked ``default = true`` (the first, if several), or None."""
    marked = [p.name for p in partitions.values() if p.default]
    return marked[0] if marked else None


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _limits(res: Resources) -> Iterator[Tuple[str, str, float, str, Any]]:
    """``(label, value text, value, partition attribute, format)`` for each limited quantity of a request."""
    yield f"nodes={res.nodes}", str(res.nodes), res.nodes, "max_nodes", str
    cpus = res.tasks_per_node * res.cpus_per_task
    label = (
        f"cpus_per_task={res.cpus_per_task}"
        if res.tasks_per_node == 1
        else f"tasks_per_node x cpus_per_task = {res.tasks_per_node} x {res.cpus_per_task} = {cpus} CPUs per node"
    )
    yield label, f"{cpus} CPUs per node", cpus, "cpus_per_node", lambda v: f"{v} CPUs per node"
    if res.mem_gb is not None:
        yield f"mem_gb={_fmt_num(res.mem_gb)}", f"{_fmt_num(res.mem_gb)} GB", res.mem_gb, "mem_gb_per_node", (
            lambda v: f"{_fmt_num(v)} GB per node"
        )
    if res.gpus_per_node:
        yield f"gpus_per_node={res.gpus_per_node}", str(res.gpus_per_node), res.gpus_per_node, "gpus_per_node", str
    if res.walltime_s is not None:
        hms = res.walltime_hms or ""
        yield f"walltime={hms}", hms, res.walltime_s, "max_walltime_s", (
            lambda v: Resources(walltime_s=v).walltime_hms
        )


def check_limits(site_name: str, partitions: Mapping[str, Partition], res: Resources) -> None:
    """Raise :class:`ResourceError` when ``res`` exceeds its partition (the named one, else the default one).

    The message names the limit and the partitions that would fit, or the most any partition allows.
    """
    if not partitions:
        return
    name = res.partition or default_partition(partitions)
    if name is None:
        return
    part = partitions.get(name)
    if part is None:
        names = sorted(partitions)
        raise ResourceError(
            f"partition={name!r} is not a partition of site {site_name!r}{did_you_mean(name, names)}; "
            f"partitions: {', '.join(names)}"
        )
    for label, value_text, value, attr, fmt in _limits(res):
        limit = getattr(part, attr)
        if limit is None or value <= limit:
            continue
        fit = [p.name for p in partitions.values() if p.name != name and _allows(p, attr, value)]
        if fit:
            tail = f"partitions with {value_text}: {', '.join(repr(f) for f in sorted(fit))}"
        else:
            most = max(getattr(p, attr) for p in partitions.values())
            tail = f"no partition of site {site_name!r} allows more than {fmt(most)}"
        raise ResourceError(f"{label} exceeds partition {name!r} (max {fmt(limit)}); {tail}")


def check_requeue(site_name: str, partitions: Mapping[str, Partition], res: Resources) -> None:
    """Raise :class:`ResourceError` for ``requeue=N`` on a partition that forbids it, or a warning
    (``signal_grace_s``) that would come before the job starts (docs/requeue.md)."""
    if not res.requeue:
        return
    name = res.partition or default_partition(partitions)
    part = partitions.get(name) if name else None
    if part is not None and not part.requeue:
        allowed = sorted(p.name for p in partitions.values() if p.requeue)
        tail = f"partitions that allow it: {', '.join(map(repr, allowed))}" if allowed else "use requeue=0"
        raise ResourceError(
            f"requeue={res.requeue}: partition {name!r} of site {site_name!r} does not allow requeued jobs (its "
            f"site-config says requeue = false); {tail}"
        )
    if res.walltime_s is not None and res.grace_s >= res.walltime_s:
        raise ResourceError(
            f"signal_grace_s={res.grace_s} is not shorter than walltime={res.walltime_hms}: the job would be warned "
            f"before it starts; give signal_grace_s under {res.walltime_s} (or a longer walltime)"
        )


def _allows(part: Partition, attr: str, value: float) -> bool:
    limit = getattr(part, attr)
    return limit is None or value <= limit
