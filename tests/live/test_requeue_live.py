"""Long jobs that survive (docs/requeue.md): checkpoint and requeue on preemption and walltime, live.

The test cluster's hidden partition ``preemptible`` requeues its jobs (``PreemptMode=REQUEUE``, ``GraceTime=20``)
when a job of ``urgent`` needs their node, and sends them their ``--signal`` first
(``SlurmctldParameters=preempt_send_user_signal``); a requeued job may start again 11 s later
(``AuthInfo=cred_expire=10``). The slow jobs (a preemption, one walltime requeue, two walltime interruptions) are
submitted together by one module fixture and waited on together: the module takes about as long as its longest
job (two 2-minute runs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpcbridge import Executor, load_site
from hpcbridge.errors import JobTimeoutError, ResourceError, SerializationError
from hpcbridge.sites.limits import Partition
from hpcbridge.store import JobFolder

pytestmark = pytest.mark.live

#: the walltime jobs (tests 2 and 4) run here, so that the preemption and node-failure tests touch only their own
WALLTIME_NODE = "node3"


def requeue_site(**partition_changes: Any) -> Any:
    """The testcluster site with the hidden partition ``preemptible`` (its site-config lists debug and short)."""
    site = load_site("testcluster")
    parts = dict(site.partitions)
    parts["preemptible"] = Partition(name="preemptible", max_walltime="00:10:00")
    for name, changes in partition_changes.items():
        parts[name] = dataclasses.replace(parts[name], **changes)
    return dataclasses.replace(site, partitions=parts)


def train(steps: int, every: int, step_s: float, log: str, started: str) -> int:
    """A training-like loop: ``steps`` steps, a checkpoint every ``every`` and when warned; each step computed is
    logged (``RUN STEP``) so that the test sees what was computed twice."""
    import hpcbridge
    from hpcbridge import checkpoint

    run = int(os.environ.get("HPCBRIDGE_RESTART", "0"))
    state = checkpoint.load(default={"step": 0, "total": 0})
    with open(f"{started}.{run}", "w") as fh:
        fh.write(f"{socket.gethostname()} {time.time()} {state['step']}")
    for step in range(state["step"], steps):
        time.sleep(step_s)
        state = {"step": step + 1, "total": state["total"] + step * step}
        with open(log, "a") as fh:
            fh.write(f"{run} {step}\n")
        if (step + 1) % every == 0 or hpcbridge.should_stop():
            checkpoint.save(state)
    return int(state["total"])


def expected(steps: int) -> int:
    return sum(step * step for step in range(steps))


def wait_for(path: Path, timeout: float) -> str:
    deadline = time.time() + timeout
    while not (path.exists() and path.read_text()):
        assert time.time() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.2)
    return path.read_text()


def recomputed(log: Path) -> int:
    steps = [line.split()[1] for line in log.read_text().splitlines()]
    return len(steps) - len(set(steps))


@pytest.fixture(scope="module")
def slow_jobs(cluster: Any, _cluster_session_dir: Path) -> dict[str, Any]:
    """The three slow jobs, submitted at once: a preemption (test 1), a walltime requeue (test 2), two walltime
    interruptions with requeue=1 (test 4)."""
    d = _cluster_session_dir / "requeue-slow"
    d.mkdir()
    site = requeue_site()
    jobs: dict[str, Any] = {"dir": d}
    # 1: 60 steps of 0.5 s, a checkpoint every 5, preempted once it runs (the node to itself: only it is preempted)
    ex = Executor(site=site, folder=str(d / "jobs1"), requeue=2, signal_grace_s=20, partition="preemptible",
                  walltime=8, extra_directives=["--exclusive", f"--exclude={WALLTIME_NODE}"])
    jobs["preempted"] = ex.submit(train, 60, 5, 0.5, str(d / "log1"), str(d / "started1"))
    # 2: 105 steps of 1 s in a 2-minute walltime, warned 30 s before the end (Slurm warns when 30-60 s are left)
    ex = Executor(site=site, folder=str(d / "jobs2"), requeue=2, signal_grace_s=30, walltime=2,
                  extra_directives=[f"--nodelist={WALLTIME_NODE}"])
    jobs["walltime"] = ex.submit(train, 105, 10, 1.0, str(d / "log2"), str(d / "started2"))
    # 4: 400 steps never finish in two runs: the second warning ends it
    ex = Executor(site=site, folder=str(d / "jobs4"), requeue=1, signal_grace_s=30, walltime=2,
                  extra_directives=[f"--nodelist={WALLTIME_NODE}"])
    jobs["twice"] = ex.submit(train, 400, 10, 1.0, str(d / "log4"), str(d / "started4"))
    return jobs


def test_a_preempted_loop_resumes_from_its_checkpoint(slow_jobs, cluster):
    """Test 1: preempted by an urgent job, requeued, resumed from the checkpoint: the uninterrupted value, two runs,
    at most one checkpoint interval (5 steps) computed twice."""
    d, job = slow_jobs["dir"], slow_jobs["preempted"]
    node = wait_for(d / "started1.0", 180).split()[0]
    time.sleep(4)  # a few steps in
    urgent = cluster.run(["sbatch", "--parsable", "--partition=urgent", f"--nodelist={node}", "-n1", "--time=1",
                          "--output=/dev/null", "--wrap=sleep 5"], cwd=d, timeout=30).stdout.strip()
    assert job.result(timeout=240) == expected(60)
    assert [a.ended for a in job.attempts] == ["PREEMPTED", "done"], job.attempts
    assert job.attempts[0].nodes == node and job.attempts[0].warned_at is not None
    assert recomputed(d / "log1") <= 5
    resumed_at = int(wait_for(d / "started1.1", 5).split()[2])
    assert 0 < resumed_at < 60  # the second run started from the checkpoint, not from step 0
    assert cluster.wait_job(urgent).state == "COMPLETED"


def test_an_array_task_preempted_restarts_alone(slow_jobs, cluster, cluster_workdir):
    """Test 5: an array of 6 on two nodes (the walltime jobs hold the third): a 1-CPU urgent job on a full node
    preempts one task; only that task runs again (its own ``scontrol requeue 123_4``), all 6 results are right."""
    site = requeue_site()
    d = cluster_workdir
    ex = Executor(site=site, folder=str(d / "jobs"), requeue=1, signal_grace_s=20, partition="preemptible",
                  walltime=5, extra_directives=[f"--exclude={WALLTIME_NODE}"])
    group = ex.map_jobs(train, [30] * 6, [5] * 6, [0.5] * 6, [str(d / f"log{i}") for i in range(6)],
                        [str(d / f"started{i}") for i in range(6)])
    deadline = time.time() + 180
    while True:  # four tasks running: node1 and node2 full
        nodes = [(d / f"started{i}.0").read_text().split()[0] for i in range(6) if (d / f"started{i}.0").exists()]
        full = sorted(n for n in set(nodes) if nodes.count(n) >= 2)
        if full:
            break
        assert time.time() < deadline, f"no node ran two tasks: {nodes}"
        time.sleep(0.2)
    time.sleep(2)
    cluster.run(["sbatch", "--parsable", "--partition=urgent", f"--nodelist={full[0]}", "-n1", "--time=1",
                 "--output=/dev/null", "--wrap=sleep 3"], cwd=d, timeout=30)
    assert group.results(timeout=240) == [expected(30)] * 6
    runs = [[a.ended for a in job.attempts] for job in group]
    assert sorted(runs) == [["PREEMPTED", "done"]] + [["done"]] * 5, runs


def test_a_node_failure_restarts_from_the_checkpoint(slow_jobs, cluster, cluster_workdir):
    """Test 3: the job's node fails (tests/cluster/ctl node-fail) after a checkpoint: Slurm requeues it (it was
    submitted requeueable) and it resumes from the checkpoint."""
    d = cluster_workdir
    ex = Executor(site=requeue_site(), folder=str(d / "jobs"), requeue=1, walltime=5,
                  extra_directives=["--exclusive", f"--exclude={WALLTIME_NODE}"])
    job = ex.submit(train, 40, 5, 0.5, str(d / "log"), str(d / "started"))
    wait_for(d / "started.0", 180)
    deadline = time.time() + 60
    while not os.path.exists(JobFolder(job.folder).checkpoint(0, 0)):
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.2)
    p = subprocess.run(cluster.ctl("node-fail", job.job_id), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert job.result(timeout=240) == expected(40)
    assert [a.ended for a in job.attempts] == ["NODE_FAIL", "done"], job.attempts
    assert int(wait_for(d / "started.1", 5).split()[2]) >= 5  # resumed from a checkpoint


def test_a_walltime_shorter_than_the_work_is_warned_saved_and_requeued(slow_jobs):
    """Test 2: warned before the walltime, saved, requeued, finished: the value is right, TIMEOUT then done."""
    d, job = slow_jobs["dir"], slow_jobs["walltime"]
    assert job.result(timeout=420) == expected(105)
    ended = [a.ended for a in job.attempts]
    assert ended[-1] == "done" and ended[:-1] and set(ended[:-1]) == {"TIMEOUT"}, job.attempts
    assert recomputed(d / "log2") <= 10


def test_requeue_1_and_a_second_interruption_end_the_job_naming_both_runs(slow_jobs, cluster):
    """Test 4: requeue=1, interrupted twice: the second warning ends it with the timeout error naming both runs."""
    job = slow_jobs["twice"]
    with pytest.raises(JobTimeoutError, match=rf"^job {job.job_id} hit its walltime \(state TIMEOUT\); it ran 2 times, "
                       r"requeue used up: run 1: node\d \S+ - \S+ TIMEOUT; run 2: node\d \S+ - \S+ TIMEOUT"):
        job.result(timeout=480)
    assert [a.ended for a in job.attempts] == ["TIMEOUT", "TIMEOUT"]
    assert job.job_id not in cluster.squeue_ids() or cluster.wait_job(job.job_id).state == "TIMEOUT"


def test_a_command_that_handles_the_warning_is_requeued_then_exits_0(cluster, cluster_workdir):
    """Test 8: ``hpcbridge submit --requeue 1 -- CMD``: the command leaves on the warning (Slurm's B:USR2 to the
    batch shell, sent here with scancel --batch), the job is requeued and the command's second run exits 0."""
    marker = cluster_workdir / "ran-once"
    script = (f'trap "echo warned; exit 3" USR2; if [ -e {marker} ]; then echo second; exit 0; fi; '
              f'echo first > {marker}; sleep 300 & wait')
    hb = [sys.executable, "-m", "hpcbridge.cli"]
    p = cluster.run([*hb, "submit", "--site", "testcluster", "--requeue", "1", "--time", "3", "--",
                     "bash", "-c", script], cwd=cluster_workdir, timeout=120)
    jid = p.stdout.strip()
    assert jid.isdigit(), p.stdout + p.stderr
    wait_for(marker, 120)
    time.sleep(1)  # the command's trap is set
    cluster.run(["scancel", "--batch", "--signal=USR2", jid], timeout=30)
    assert cluster.wait_job(jid, timeout=180).state == "COMPLETED"
    runs = cluster.run(["sacct", "-n", "-X", "-P", "-D", "-j", jid, "-o", "State"], timeout=30).stdout.split()
    assert runs == ["REQUEUED", "COMPLETED"], runs
    p = cluster.run([*hb, "result", jid, "--timeout", "120"], cwd=cluster_workdir, timeout=180)
    assert p.stdout.strip() == "0"
    status = json.loads(cluster.run([*hb, "status", "--json", "-n", "50"], timeout=120).stdout)
    (row,) = [r for r in status if r["job_id"] == jid]
    assert [a["ended"] for a in row["attempts"]] == ["SIGNALLED", "done"], row


def test_bad_requeue_input_is_refused_before_anything_is_submitted(cluster, cluster_workdir):
    """Test 9 (before submission): requeue on a partition that forbids it, on a site that cannot requeue, a warning
    longer than the walltime: each a clear error, nothing in the queue, no job folder."""
    before = cluster.squeue_ids()
    jobs = cluster_workdir / "jobs"
    forbids = requeue_site(debug={"requeue": False})
    with pytest.raises(ResourceError) as info:
        Executor(site=forbids, folder=str(jobs), requeue=1, partition="debug").submit(abs, -1)
    assert str(info.value) == ("requeue=1: partition 'debug' of site 'testcluster' does not allow requeued jobs (its "
                               "site-config says requeue = false); partitions that allow it: 'preemptible', 'short'")
    with pytest.raises(ResourceError) as info:
        Executor(site="local", folder=str(jobs), requeue=1)
    assert str(info.value) == ("requeue=1: the local site cannot requeue a job (it has no walltime warning, "
                               "preemption or requeue); use requeue=0 here, or a Slurm site (docs/requeue.md)")
    with pytest.raises(ResourceError) as info:
        Executor(site="testcluster", folder=str(jobs), requeue=1, walltime=1, signal_grace_s=90)
    assert str(info.value) == ("signal_grace_s=90 is not shorter than walltime=00:01:00: the job would be warned "
                               "before it starts; give signal_grace_s under 60 (or a longer walltime)")
    cluster.assert_nothing_left(before, jobs)


def save_then_unpicklable() -> None:
    import threading

    from hpcbridge import checkpoint

    checkpoint.save({"step": 3})
    checkpoint.save({"step": 4, "lock": threading.Lock()})


def test_a_state_that_cannot_be_pickled_fails_the_call_and_keeps_the_last_checkpoint(cluster, cluster_workdir):
    """Test 9 (in the job): the job records the SerializationError; the last good checkpoint stays."""
    ex = Executor(site="testcluster", folder=str(cluster_workdir / "jobs"), requeue=1, walltime=2)
    job = ex.submit(save_then_unpicklable)
    with pytest.raises(SerializationError, match=r"^checkpoint.save: the state cannot be pickled \(dict: "):
        job.result(timeout=120)
    with open(JobFolder(job.folder).checkpoint(0, 0), "rb") as fh:
        assert pickle.load(fh) == {"step": 3}


def gloo_train(steps: int, every: int, step_s: float, started: str) -> float:
    """Every rank all-reduces each step; the ranks agree to stop (an all-reduce of their flags); rank 0 saves."""
    import torch
    import torch.distributed as dist

    import hpcbridge
    from hpcbridge import checkpoint

    env = hpcbridge.init_torch_distributed(timeout_s=120)
    run = int(os.environ.get("HPCBRIDGE_RESTART", "0"))
    state = checkpoint.load(default={"step": 0, "total": 0.0})
    with open(f"{started}.{env.rank}.{run}", "w") as fh:
        fh.write(f"{socket.gethostname()} {time.time()} {state['step']}")
    for step in range(state["step"], steps):
        time.sleep(step_s)
        t = torch.tensor([float(env.rank + step)])
        dist.all_reduce(t)
        stop = torch.tensor([1.0 if hpcbridge.should_stop() else 0.0])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        state = {"step": step + 1, "total": state["total"] + t.item()}
        while stop.item() > 0 and not hpcbridge.should_stop():  # another rank was warned first: so is this one
            time.sleep(0.05)
        if (step + 1) % every == 0 or stop.item() > 0:
            checkpoint.save(state)
    dist.destroy_process_group()
    return float(state["total"])


def test_a_preempted_3_node_gloo_loop_resumes_on_every_rank_from_rank_0s_checkpoint(slow_jobs, cluster,
                                                                                     cluster_workdir):
    """Test 6: 3 nodes x 1 rank (srun) preempted on one node: srun passes the warning to every rank, rank 0 saves,
    the job is requeued and every rank resumes from rank 0's checkpoint; all ranks' results are right."""
    d = cluster_workdir
    ex = Executor(site=requeue_site(), folder=str(d / "jobs"), requeue=1, signal_grace_s=20, partition="preemptible",
                  walltime=5, nodes=3, tasks_per_node=1, launcher="srun", mem_gb=1)
    job = ex.submit(gloo_train, 40, 5, 0.5, str(d / "started"))
    wait_for(d / "started.0.0", 240)
    node = wait_for(d / "started.1.0", 60).split()[0]
    time.sleep(4)
    cluster.run(["sbatch", "--parsable", "--partition=urgent", f"--nodelist={node}", "--exclusive", "--time=1",
                 "--output=/dev/null", "--wrap=sleep 3"], cwd=d, timeout=30)
    want = float(sum(3 * step + 3 for step in range(40)))
    assert job.results(timeout=300) == [want] * 3
    assert [a.ended for a in job.attempts] == ["PREEMPTED", "done"], job.attempts
    resumed = {wait_for(d / f"started.{rank}.1", 5).split()[2] for rank in range(3)}
    assert len(resumed) == 1 and int(resumed.pop()) > 0  # every rank from the same (rank 0's) checkpoint
