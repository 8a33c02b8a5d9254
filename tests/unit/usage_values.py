"""Usage values for the unit tests of what reads them (advice, report, picture, display)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class RankUsage:
    node: str
    rank: int
    cpu_time_s: Optional[float] = None
    peak_rss_gb: Optional[float] = None
    gpu_utilization: Optional[float] = None
    gpu_mem_peak_gb: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Usage:
    job_id: str = "100"
    state: str = "COMPLETED"
    nodes: Optional[int] = 1
    cpus: Optional[int] = 1
    mem_gb: Optional[float] = 1.0
    walltime_s: Optional[float] = 3600
    gpus: Optional[int] = 0
    elapsed_s: Optional[float] = 60.0
    queue_wait_s: Optional[float] = 1.0
    cpu_time_s: Optional[float] = 30.0
    peak_mem_gb: Optional[float] = 0.1
    gpu_utilization: Optional[float] = None
    gpu_mem_peak_gb: Optional[float] = None
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ranks: Tuple[RankUsage, ...] = ()
    notes: Tuple[str, ...] = ()


def rank(node: str, number: int, cpu: Optional[float] = None, rss: Optional[float] = None) -> RankUsage:
    return RankUsage(node, number, cpu, rss)


def usage(**fields: Any) -> Any:
    values: Dict[str, Any] = dict(fields)
    return Usage(**values)
