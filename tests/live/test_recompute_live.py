"""The seam of requeue and usage (docs/requeue.md, docs/usage.md): the work an interruption recomputed, and the usage
of a job that ran twice, live.

A loop saves a checkpoint every 6 steps of 0.5 s (every 3 s) and, when warned, leaves without saving (so the steps
after its last checkpoint are computed again by the next run). It is preempted by an ``urgent`` job on the test
cluster's hidden partition ``preemptible`` (``PreemptMode=REQUEUE``, ``GraceTime=20``), requeued by the batch shell
and resumed. About 50 s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from test_requeue_live import expected, requeue_site, wait_for

from hpcbridge import Executor, waste

pytestmark = pytest.mark.live

STEP_S = 0.5
EVERY = 6


def train_leaving_unsaved(steps: int, every: int, step_s: float, log: str, started: str) -> int:
    """``steps`` steps, a checkpoint every ``every``; warned: leaves at once, keeping the last periodic checkpoint.
    Each step computed is logged (``RUN STEP``)."""
    import hpcbridge
    from hpcbridge import checkpoint
    from hpcbridge.errors import StopForRequeue

    run = int(os.environ.get("HPCBRIDGE_RESTART", "0"))
    state = checkpoint.load(default={"step": 0, "total": 0})
    with open(f"{started}.{run}", "w") as fh:
        fh.write(f"{os.uname().nodename} {time.time()} {state['step']}")
    for step in range(state["step"], steps):
        time.sleep(step_s)
        state = {"step": step + 1, "total": state["total"] + step * step}
        with open(log, "a") as fh:
            fh.write(f"{run} {step}\n")
        if hpcbridge.should_stop():
            raise StopForRequeue("warned: leaving with the last periodic checkpoint")
        if (step + 1) % every == 0:
            checkpoint.save(state)
    return int(state["total"])


def test_a_preempted_job_counts_its_recomputed_work_and_both_runs(cluster: Any, cluster_workdir: Path) -> None:
    """Preempted, requeued, resumed: ``attempts[0].recomputed_s`` is the CPUs x the time after the last checkpoint
    (at least the steps the log shows computed twice, at most one checkpoint interval); ``job.usage()`` counts both
    runs' allocation as sacct --duplicates lists them; the waste report counts the recomputed work."""
    d = cluster_workdir
    ex = Executor(site=requeue_site(), folder=str(d / "jobs"), requeue=2, signal_grace_s=20, partition="preemptible",
                  walltime=5, extra_directives=["--exclusive"])
    job = ex.submit(train_leaving_unsaved, 60, EVERY, STEP_S, str(d / "log"), str(d / "started"))
    node = wait_for(d / "started.0", 180).split()[0]
    time.sleep(5)  # a checkpoint or two in, and some steps after the last
    urgent = cluster.run(["sbatch", "--parsable", "--partition=urgent", f"--nodelist={node}", "-n1", "--time=1",
                          "--output=/dev/null", "--wrap=sleep 3"], cwd=d, timeout=30).stdout.strip()
    assert job.result(timeout=240) == expected(60)
    assert [a.ended for a in job.attempts] == ["PREEMPTED", "done"], job.attempts

    # sacct's own records of both runs
    out = cluster.run(["sacct", "-n", "-X", "-P", "-D", "-j", job.job_id, "-o", "State,AllocCPUS,ElapsedRaw"],
                      timeout=30).stdout.split()
    runs = [line.split("|") for line in out]
    assert len(runs) == 2, runs
    cpus = int(runs[0][1])
    core_s = sum(int(c) * int(e) for _, c, e in runs)

    steps = [line.split() for line in (d / "log").read_text().splitlines()]
    twice = len(steps) - len({s for _, s in steps})
    assert 0 < twice <= EVERY  # the run left after its last checkpoint, before the next
    recomputed = job.attempts[0].recomputed_s
    assert recomputed is not None
    # the time after the last save: the steps computed twice (less the sleep's precision), then leaving and the
    # shell's requeue (under 1 s); never more than one checkpoint interval and that second
    assert cpus * (twice * STEP_S - 0.1) <= recomputed <= cpus * (EVERY * STEP_S + 1.0), (recomputed, twice, cpus)
    assert job.attempts[1].recomputed_s == 0.0

    usage = job.usage()
    assert usage.runs == 2
    assert usage.core_hours_allocated == pytest.approx(core_s / 3600)
    assert usage.core_hours_allocated > usage.cpus * (usage.elapsed_s or 0) / 3600  # not only the last run
    assert usage.recomputed_core_s == pytest.approx(recomputed)
    row = waste.row_of(usage)
    assert row.core_hours_recomputed == pytest.approx(recomputed / 3600)
    assert cluster.wait_job(urgent).state == "COMPLETED"
