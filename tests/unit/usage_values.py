"""Usage values for the unit tests of what reads them (advice, report, picture, display): real
:class:`hpcbridge.usage.Usage` values with defaults for the figures a test does not care about."""

from __future__ import annotations

from typing import Any, Dict, Optional

from hpcbridge.usage import RankUsage, Usage

DEFAULTS: Dict[str, Any] = {
    "job_id": "100", "state": "COMPLETED", "nodes": 1, "cpus": 1, "mem_gb": 1.0, "walltime_s": 3600.0, "gpus": 0,
    "elapsed_s": 60.0, "queue_wait_s": 1.0, "cpu_time_s": 30.0, "peak_mem_gb": 0.1, "gpu_utilization": None,
    "gpu_mem_peak_gb": None,
}


def rank(node: str, number: int, cpu: Optional[float] = None, rss: Optional[float] = None) -> RankUsage:
    return RankUsage(node, number, cpu, rss)


def usage(**fields: Any) -> Usage:
    return Usage(**{**DEFAULTS, **fields})
