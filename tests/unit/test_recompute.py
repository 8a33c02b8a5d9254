"""The seam of requeue and usage (pure): the work each interruption recomputed (``Attempt.recomputed_s``), the usage
of a job that ran more than once (sacct --duplicates), and the waste report's recomputed line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hpcbridge import attempts, checkpoint, waste
from hpcbridge.schedulers.base import ClusterFacts
from hpcbridge.schedulers.slurm import SlurmScheduler
from hpcbridge.state import Attempt
from hpcbridge.store import JobFolder
from hpcbridge.transport.base import Completed
from hpcbridge.usage import Usage, recomputed_of

# recorded on the test cluster (Slurm 22.05): job 8348 (3 nodes, an srun step), requeued after 7 s, then completed
# in 18 s; format slurm_usage.USAGE_FIELDS, ``sacct --duplicates``: each run's job line, then its steps
SACCT_D = """\
8348|REQUEUED|3|3|7|00:03.869|billing=3,cpu=3,mem=3G,node=3|3G|00:05:00|2026-12-06T13:47:58|2026-12-06T13:48:00|2026-12-06T13:48:07|||
8348.batch|CANCELLED|1|1|7|00:00.086|cpu=1,mem=1G,node=1|||2026-12-06T13:48:00|2026-12-06T13:48:00|2026-12-06T13:48:07|13356K|cpu=00:00:00,energy=0,fs/disk=1744967,mem=13356K,pages=7,vmem=427052K|cpu=00:00:00,energy=0,fs/disk=1744967,mem=13356K,pages=7,vmem=427052K
8348.0|FAILED|3|3|7|00:03.782|cpu=3,mem=3G,node=3|||2026-12-06T13:48:00|2026-12-06T13:48:00|2026-12-06T13:48:07|215876K|cpu=00:00:02,energy=0,fs/disk=65324686,mem=646968K,pages=39,vmem=2295536K|cpu=00:00:00,energy=0,fs/disk=21776507,mem=215876K,pages=18,vmem=814352K
8348|COMPLETED|3|3|18|00:04.021|billing=3,cpu=3,mem=3G,node=3|3G|00:05:00|2026-12-06T13:48:07|2026-12-06T13:48:41|2026-12-06T13:48:59|||
8348.batch|COMPLETED|1|1|18|00:00.051|cpu=1,mem=1G,node=1|||2026-12-06T13:48:41|2026-12-06T13:48:41|2026-12-06T13:48:59|13644K|cpu=00:00:00,energy=0,fs/disk=1744913,mem=13644K,pages=5,vmem=427052K|cpu=00:00:00,energy=0,fs/disk=1744913,mem=13644K,pages=5,vmem=427052K
8348.0|COMPLETED|3|3|18|00:03.970|cpu=3,mem=3G,node=3|||2026-12-06T13:48:41|2026-12-06T13:48:41|2026-12-06T13:48:59|215808K|cpu=00:00:02,energy=0,fs/disk=65326276,mem=647068K,pages=64,vmem=2295536K|cpu=00:00:00,energy=0,fs/disk=21777580,mem=215808K,pages=38,vmem=814352K
"""
# the same job's runs as Slurm.attempts_argv asks for them (recorded)
ATTEMPTS = """\
8348|REQUEUED|node[1-3]|2026-12-06T13:47:58|2026-12-06T13:48:00|2026-12-06T13:48:07|7|3
8348|COMPLETED|node[1-3]|2026-12-06T13:48:07|2026-12-06T13:48:41|2026-12-06T13:48:59|18|3
"""


def out(stdout: str) -> Completed:
    return Completed(["sacct"], 0, stdout, "")


def test_usage_of_a_requeued_job_counts_every_run() -> None:
    slurm = SlurmScheduler()
    assert "--duplicates" in (slurm.usage_argv(["8348"], 0.0, 100.0, ClusterFacts(accounting=True)) or [])
    measured, complete = slurm.parse_usage(out(SACCT_D), ClusterFacts(accounting=True))["8348"]
    assert complete and measured.state == "COMPLETED"
    f = measured.figures
    assert (f["runs"], f["cpus"], f["elapsed_s"], f["earlier_core_s"]) == (2, 3, 18.0, 21.0)
    assert f["cpu_time_s"] == pytest.approx(3.869 + 4.021)
    assert f["queue_wait_s"] == 2.0 + 34.0  # the first wait and the requeue's
    assert f["peak_mem_gb"] == pytest.approx(215876 * 1024 / 2**30)  # the first run's step: larger than the last's


def test_usage_core_hours_of_all_runs() -> None:
    measured, _ = SlurmScheduler().parse_usage(out(SACCT_D), ClusterFacts(accounting=True))["8348"]
    from hpcbridge.usage import combine

    u = combine("8348", "", [measured], recomputed_core_s=4.5)
    assert u.runs == 2 and u.elapsed_s == 18.0
    assert u.core_hours_allocated == pytest.approx((3 * 18 + 3 * 7) / 3600)
    assert u.cpu_efficiency == pytest.approx((3.869 + 4.021) / (3 * 25))
    assert u.core_hours_recomputed == pytest.approx(4.5 / 3600)
    assert u.time_efficiency == pytest.approx(18 / 300)  # the last run against its walltime
    again = Usage.from_json(u.to_json())
    assert (again.runs, again.earlier_core_s, again.recomputed_core_s) == (2, 21.0, 4.5)
    total = Usage.total([u, combine("1", "COMPLETED", [], recomputed_core_s=None)])
    assert total.core_hours_recomputed == pytest.approx(4.5 / 3600)  # the single run counts 0
    assert total.runs == 3


def test_a_job_that_ran_once_recomputed_nothing_and_an_unread_one_is_unknown() -> None:
    from hpcbridge.usage import combine

    assert combine("1", "COMPLETED", []).core_hours_recomputed == 0.0
    assert Usage.from_json(json.dumps({**json.loads(combine("2", "COMPLETED", []).to_json()), "runs": 2})
                           ).core_hours_recomputed is None
    assert recomputed_of([1.5, 0.0]) == 1.5 and recomputed_of([None, 0.0]) is None and recomputed_of([]) is None


def test_attempt_costs_follow_the_runs_order() -> None:
    slurm = SlurmScheduler()
    assert "ElapsedRaw" in slurm.attempts_argv("8348", ClusterFacts(accounting=True))[-2]  # type: ignore[index]
    shuffled = "".join(reversed(ATTEMPTS.splitlines(keepends=True)))
    assert [r[0] for r in slurm.parse_attempts(shuffled)] == ["REQUEUED", "COMPLETED"]
    assert slurm.parse_attempt_costs(shuffled) == [(7.0, 3), (18.0, 3)]


def run(ended: str, requeued_at: Any = None) -> Attempt:
    return Attempt("node1", "2026-12-06T13:48:00", "2026-12-06T13:48:07", ended, requeued_at=requeued_at)


def test_recomputed_arithmetic() -> None:
    runs = [run("PREEMPTED", 1000.0), run("NODE_FAIL"), run("TIMEOUT", 3000.0), run("done")]
    costs = [(30.0, 2), (40.0, 2), (50.0, 4), (10.0, 2)]
    saved = {0: (997.5, 27.0), 1: (1500.0, 31.0)}  # run 2 saved nothing
    got = attempts.recomputed(runs, costs, saved)
    # run 1: requeued by the shell 2.5 s after its last save, 2 CPUs; run 2: a node failure 40 - 31 s after its
    # start; run 3: never saved, all its 50 s on 4 CPUs; the last run: nothing recomputes it
    assert [a.recomputed_s for a in got] == [5.0, 18.0, 200.0, 0.0]
    assert [a.ended for a in got] == ["PREEMPTED", "NODE_FAIL", "TIMEOUT", "done"]


def test_recomputed_unknown_figures_are_none_never_negative() -> None:
    runs = [run("PREEMPTED"), run("PREEMPTED", 99.0), run("PREEMPTED"), run("done")]
    costs = [(30.0, None), (20.0, 1), (5.0, 1)]  # no CPUs for run 1; no costs at all for the last
    saved = {1: (100.0, 19.0), 2: (10.0, None)}  # run 2's requeue before the save (clock skew): 0; run 3: no offset
    assert [a.recomputed_s for a in attempts.recomputed(runs, costs, saved)] == [None, 0.0, None, 0.0]


def test_the_marker_keeps_each_run_s_last_save(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCBRIDGE_FOLDER", str(tmp_path))
    monkeypatch.setenv("HPCBRIDGE_TASK", "0")
    monkeypatch.setattr(checkpoint, "_warned_at", None)
    monkeypatch.setattr(checkpoint.time, "time", lambda: 1010.0)
    monkeypatch.setenv("HPCBRIDGE_RUN_START", "1000.5")
    monkeypatch.setenv("HPCBRIDGE_RESTART", "0")
    checkpoint.save({"step": 1})
    monkeypatch.setenv("HPCBRIDGE_RESTART", "1")
    monkeypatch.delenv("HPCBRIDGE_RUN_START")
    checkpoint.save({"step": 2})
    with open(JobFolder(str(tmp_path)).checkpoint_marker(0), "rb") as fh:
        marker = fh.read()
    assert attempts.saves(marker) == {0: (1010.0, 9.5), 1: (1010.0, None)}
    assert attempts.saves(b"not json") == {} and attempts.saves(None) == {}


def usage(job_id: str, runs: int, recomputed: Any, elapsed: float = 3600.0) -> Usage:
    return Usage(job_id=job_id, state="COMPLETED", nodes=1, cpus=2, mem_gb=1.0, walltime_s=7200.0, gpus=0,
                 elapsed_s=elapsed, queue_wait_s=0.0, cpu_time_s=elapsed, peak_mem_gb=0.5, gpu_utilization=None,
                 gpu_mem_peak_gb=None, runs=runs, earlier_core_s=3600.0 * (runs - 1), recomputed_core_s=recomputed)


def test_the_waste_report_counts_recomputed_work() -> None:
    report = waste.build([{"usage": usage("1", 2, 1800.0)}, {"usage": usage("2", 1, None)},
                          {"usage": usage("3", 3, None)}])
    assert [r.core_hours_recomputed for r in report.rows] == [0.5, 0.0, None]
    assert report.rows[0].core_hours_allocated == 3.0  # 2 CPUs x 1 h, and the earlier run's 1 core-hour
    assert report.totals.core_hours_recomputed == 0.5 and report.totals.interruptions == 3
    assert report.as_json()["total"]["core_hours_recomputed"] == 0.5
    assert ("0.5 core-hours were recomputed after 3 interruptions (the work of each interrupted run after its last "
            "checkpoint): busy, yet wasted; not measured for 1 job") in waste.summary_lines(report)
    plain = waste.build([{"usage": usage("2", 1, None)}])
    assert not any("recomputed" in line for line in waste.summary_lines(plain))
