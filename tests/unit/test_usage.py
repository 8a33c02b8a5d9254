"""Usage: the efficiencies, a group's total, sources put together, JSON round trip (hpcbridge.usage)."""

from __future__ import annotations

import pytest

from hpcbridge.usage import Measured, RankUsage, Usage, combine, rank_usage, requested, sampled


def one(job_id: str = "1", **kw: object) -> Usage:
    fields = dict(job_id=job_id, state="COMPLETED", nodes=1, cpus=2, mem_gb=1.0, walltime_s=300.0, gpus=0,
                  elapsed_s=20.0, queue_wait_s=1.0, cpu_time_s=20.0, peak_mem_gb=0.3, gpu_utilization=None,
                  gpu_mem_peak_gb=None)
    fields.update(kw)
    return Usage(**fields)  # type: ignore[arg-type]


def test_efficiencies_of_one_job() -> None:
    u = one()
    assert u.cpu_efficiency == pytest.approx(0.5)
    assert u.mem_efficiency == pytest.approx(0.3)
    assert u.time_efficiency == pytest.approx(20 / 300)
    assert u.core_hours_allocated == pytest.approx(40 / 3600)
    assert u.core_hours_used == pytest.approx(20 / 3600)
    assert u.core_hours_wasted == pytest.approx(20 / 3600)
    assert u.gpu_hours_allocated == 0.0
    assert u.gpu_hours_used is None


def test_mem_efficiency_is_per_node() -> None:
    # 3 nodes with 1 GB each (3 GB in total); the busiest node peaked at 0.5 GB
    assert one(nodes=3, mem_gb=3.0, peak_mem_gb=0.5).mem_efficiency == pytest.approx(0.5)


def test_unknown_figures_give_none() -> None:
    u = one(cpu_time_s=None, mem_gb=None, walltime_s=None, elapsed_s=None)
    assert (u.cpu_efficiency, u.mem_efficiency, u.time_efficiency, u.core_hours_wasted) == (None, None, None, None)


def test_total_sums_over_members() -> None:
    a = one("1", cpus=2, elapsed_s=100.0, cpu_time_s=100.0, walltime_s=1000.0, peak_mem_gb=0.2)
    b = one("2", cpus=4, elapsed_s=50.0, cpu_time_s=0.0, walltime_s=1000.0, peak_mem_gb=0.6, state="FAILED",
            gpus=1, gpu_utilization=0.5)
    t = Usage.total([a, b])
    assert t.state == "MIXED"
    assert t.cpus == 6 and t.elapsed_s == 150.0 and t.cpu_time_s == 100.0 and t.peak_mem_gb == 0.6
    assert t.core_hours_allocated == pytest.approx((200 + 200) / 3600)
    assert t.cpu_efficiency == pytest.approx(100 / 400)
    assert t.time_efficiency == pytest.approx(150 / 2000)
    assert t.mem_efficiency == pytest.approx(0.8 / 2.0)
    assert t.gpu_hours_allocated == pytest.approx(50 / 3600)
    assert t.gpu_utilization == pytest.approx(0.5)
    assert [j.job_id for j in t.jobs] == ["1", "2"]
    assert Usage.from_json(t.to_json()) == t


def test_combine_takes_each_figure_from_the_first_source_that_has_it() -> None:
    ranks = [rank_usage({"node": "n1", "rank": 0, "cpu_time_s": 9.0, "peak_rss_bytes": 0.2 * 2**30, "started": 100.0,
                         "finished": 120.0}),
             rank_usage({"node": "n1", "rank": 1, "cpu_time_s": 11.0, "peak_rss_bytes": 0.1 * 2**30, "started": 101.0,
                         "finished": 119.0}),
             rank_usage({"node": "n2", "rank": 2, "cpu_time_s": 10.0, "peak_rss_bytes": 0.25 * 2**30})]
    accounting = Measured("accounting", {"cpus": 6, "elapsed_s": 22.0, "cpu_time_s": 31.0})
    asked = requested({"nodes": 2, "tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 1.0, "walltime_s": 600})
    u = combine("7", "COMPLETED", [accounting, sampled(ranks), asked], ranks, ["no GPU data (NVML not available)"])
    assert (u.cpus, u.elapsed_s, u.cpu_time_s) == (6, 22.0, 31.0)
    assert u.peak_mem_gb == pytest.approx(0.3)  # n1's two ranks together
    assert (u.nodes, u.mem_gb, u.walltime_s) == (2, 2.0, 600.0)
    assert u.sources == {"cpus": "accounting", "elapsed_s": "accounting", "cpu_time_s": "accounting",
                         "peak_mem_gb": "sampler", "nodes": "request", "mem_gb": "request", "walltime_s": "request",
                         "gpus": "request"}
    assert [r.rank for r in u.ranks] == [0, 1, 2]
    assert u.notes == ("no GPU data (NVML not available)",)
    only_sampler = combine("7", "COMPLETED", [sampled(ranks), asked], ranks)
    assert only_sampler.cpu_time_s == 30.0 and only_sampler.elapsed_s == 20.0
    assert only_sampler.sources["cpu_time_s"] == "sampler"
    assert isinstance(only_sampler.ranks[0], RankUsage)


def test_the_sampler_writes_a_summary_of_this_process(tmp_path: object) -> None:
    import json
    import os
    import time

    from hpcbridge import sampler

    path = os.path.join(str(tmp_path), "use", "0.1.json")
    meter = sampler.Sampler(path, 1, interval_s=0.05).start()
    t0 = time.process_time()
    block = bytearray(64 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    while time.process_time() - t0 < 0.3:
        pass
    summary = meter.stop()
    assert meter.stop() is summary  # once: the atexit call after the worker's own changes nothing
    on_disk = json.loads(open(path).read())
    assert on_disk == summary and summary["complete"] and summary["rank"] == 1
    assert summary["cpu_time_s"] >= 0.3 and summary["peak_rss_bytes"] >= 64 * 2**20
    import importlib.util

    if importlib.util.find_spec("pynvml") is None:  # no nvidia-ml-py (as here): the note says so, no GPU figures
        assert summary["gpu"] is None and summary["notes"] == [sampler.NO_NVML]
    u = rank_usage(summary)
    assert u.rank == 1 and u.cpu_time_s == summary["cpu_time_s"] and u.peak_rss_gb >= 64 / 1024
