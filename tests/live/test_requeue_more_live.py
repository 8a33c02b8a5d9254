"""Requeue with the other parts (docs/requeue.md): a job in a container image, a site without accounting, and
torchrun; live on the test cluster's hidden partition ``preemptible`` (``PreemptMode=REQUEUE``, ``GraceTime=20``,
preempted by ``urgent``; a requeued job may start again 11 s later).

The three preempted jobs are submitted together by one module fixture and preempted together (two ``urgent`` jobs:
one on node3, where the container job and the accounting-off job run, one on a node of the torchrun job), and
waited on together: the module takes about as long as its slowest job (the torchrun one).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from hpcbridge import Executor, load_site
from hpcbridge.attempts import saves
from hpcbridge.sites.limits import Partition
from hpcbridge.store import JobFolder

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
IMAGES = Path("/var/lib/hpcbridge-testcluster/images")
WORKER = str(IMAGES / "worker")
#: the checkout's top-level directory: bound into the image so that the jobs import this checkout's hpcbridge
TOP = "/" + REPO.parts[1]
MARK = "hello from the worker image"
#: the single-node jobs run here; the torchrun job on the two others
SINGLE_NODE = "node3"


def requeue_site(**changes: Any) -> Any:
    """The testcluster site (this checkout's site-configs) with the hidden partition ``preemptible``."""
    with pytest.MonkeyPatch.context() as mp:  # this checkout's site-configs, as test_containers_live.py loads them
        mp.setenv("HPCBRIDGE_SITES_PATH", str(REPO / "site-configs"))
        site = load_site("testcluster", env={"PYTHONPATH": str(REPO), "PMIX_MCA_gds": "hash"})
    parts = dict(site.partitions)
    parts["preemptible"] = Partition(name="preemptible", max_walltime="00:10:00")
    return dataclasses.replace(site, partitions=parts, **changes)


def train(steps: int, every: int, step_s: float, started: str) -> Any:
    """A training-like loop (as in test_requeue_live.py) that also keeps, in its state, where each run ran: the
    image's own module and ``CH_RUNNING`` (ch-run's variable), or the host."""
    import hpcbridge
    from hpcbridge import checkpoint

    try:
        import hpcbridge_testimage  # only the worker image has it

        where = f"{hpcbridge_testimage.MARK} / {os.environ.get('CH_RUNNING')}"
    except ImportError:
        where = "host"
    run = int(os.environ.get("HPCBRIDGE_RESTART", "0"))
    state = checkpoint.load(default={"step": 0, "total": 0, "runs": []})
    state = {**state, "runs": [*state["runs"], where]}
    with open(f"{started}.{run}", "w") as fh:
        fh.write(f"{socket.gethostname()} {time.time()} {state['step']}")
    for step in range(state["step"], steps):
        time.sleep(step_s)
        state = {**state, "step": step + 1, "total": state["total"] + step * step}
        if (step + 1) % every == 0 or hpcbridge.should_stop():
            checkpoint.save(state)
    return state["total"], state["runs"]


def gloo_train(steps: int, every: int, step_s: float, started: str) -> float:
    """Every rank all-reduces each step; the ranks agree to stop (an all-reduce of their flags); rank 0 saves (as in
    test_requeue_live.py)."""
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


def expected(steps: int) -> int:
    return sum(step * step for step in range(steps))


def wait_for(path: Path, timeout: float) -> str:
    deadline = time.time() + timeout
    while not (path.exists() and path.read_text()):
        assert time.time() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.2)
    return path.read_text()


@pytest.fixture(scope="module")
def preempted(cluster: Any, _cluster_session_dir: Path) -> Dict[str, Any]:
    """The preempted jobs, submitted at once and preempted at once."""
    missing = [] if (IMAGES / "worker" / "usr").is_dir() else [WORKER]
    if missing:
        pytest.fail(f"the test image {missing} is missing: run tests/cluster/up (it runs tests/cluster/images)")
    d = _cluster_session_dir / "requeue-more"
    d.mkdir()
    jobs: Dict[str, Any] = {"dir": d}
    common = dict(requeue=1, signal_grace_s=20, partition="preemptible", walltime=5)
    # 1: the loop in the worker image on node3: 80 steps of 0.5 s, a checkpoint every 5
    ex = Executor(site=requeue_site(), folder=str(d / "jobs-ctr"), container=WORKER, container_binds=[TOP],
                  extra_directives=[f"--nodelist={SINGLE_NODE}"], **common)
    jobs["container"] = ex.submit(train, 80, 5, 0.5, str(d / "started-ctr"))
    # 2: the same loop on the host, from a site whose accounting is off (squeue and scontrol only), on node3 too
    ex = Executor(site=requeue_site(accounting=False, poll_interval_max_s=2.0), folder=str(d / "jobs-acct"),
                  extra_directives=[f"--nodelist={SINGLE_NODE}"], **common)
    assert ex._backend.facts.accounting is False
    jobs["no-accounting"] = ex.submit(train, 80, 5, 0.5, str(d / "started-acct"))
    # 3: a 2-node torchrun gloo loop on the two other nodes (torch needs more than the default memory)
    ex = Executor(site=requeue_site(), folder=str(d / "jobs-torchrun"), nodes=2, tasks_per_node=1,
                  launcher="torchrun", mem_gb=1.5, extra_directives=[f"--exclude={SINGLE_NODE}"], **common)
    jobs["torchrun"] = ex.submit(gloo_train, 60, 5, 0.5, str(d / "started-tr"))
    # every job runs, a few steps in: preempt them (every job on node3, and the torchrun job on its rank 1's node)
    for started in ("started-ctr.0", "started-acct.0", "started-tr.0.0"):
        wait_for(d / started, 240)
    torchrun_node = wait_for(d / "started-tr.1.0", 60).split()[0]
    time.sleep(4)
    for node in (SINGLE_NODE, torchrun_node):
        cluster.run(["sbatch", "--parsable", "--partition=urgent", f"--nodelist={node}", "--exclusive", "--time=1",
                     "--output=/dev/null", "--wrap=sleep 3"], cwd=d, timeout=30)
    # while the accounting-off job is requeued and waits to start again, it is not taken as finished
    job, seen = jobs["no-accounting"], []
    deadline = time.time() + 180
    while not (d / "started-acct.1").exists() and not job.done() and time.time() < deadline:
        seen.append((job.done(), job.state.value, job.native_state))
        time.sleep(0.5)
    jobs["no-accounting seen"] = seen
    return jobs


def test_a_container_job_is_requeued_from_the_host_and_resumes_inside_the_image(preempted: Dict[str, Any],
                                                                                 cluster: Any) -> None:
    """Test 7: the loop runs in the worker image; preempted, the host's batch shell forwards the warning into the
    container (ch-run execs the worker: the shell's child is the worker itself), the call saves, the shell requeues
    the job (scontrol runs on the host), and the second run resumes inside the image from the checkpoint: the
    uninterrupted value, both runs in the image, two runs, nothing left in the queue."""
    d, job = preempted["dir"], preempted["container"]
    total, runs = job.result(timeout=300)
    assert total == expected(80)
    assert runs == [f"{MARK} / Weird Al Yankovic"] * 2
    assert [a.ended for a in job.attempts] == ["PREEMPTED", "done"], job.attempts
    assert len(job.attempts) == 2 and job.attempts[0].nodes == SINGLE_NODE
    resumed_at = int(wait_for(d / "started-ctr.1", 5).split()[2])
    assert 0 < resumed_at < 80  # from the checkpoint, not from step 0
    assert job.job_id not in cluster.squeue_ids()


def test_without_accounting_a_requeued_job_is_not_taken_as_finished_and_resumes(preempted: Dict[str, Any],
                                                                              cluster: Any) -> None:
    """The accounting-off path (squeue and scontrol show job only): while the preempted job is requeued and waits
    to start again it stays unfinished; it resumes from its checkpoint with the uninterrupted value, and
    ``job.attempts`` has both runs: the first from the batch shell's note (its nodes, start and end; no CPU count,
    so no recomputed figure), the last from scontrol."""
    d, job, seen = preempted["dir"], preempted["no-accounting"], preempted["no-accounting seen"]
    total, runs = job.result(timeout=300)
    assert (total, runs) == (expected(80), ["host", "host"])
    assert seen and not any(done for done, _, _ in seen), seen
    assert {native for _, _, native in seen} & {"REQUEUED", "PENDING", "REQUEUE_HOLD"}, seen  # the wait was seen
    assert [a.ended for a in job.attempts] == ["PREEMPTED", "done"], job.attempts
    first, last = job.attempts
    assert first.nodes == last.nodes == SINGLE_NODE, job.attempts
    assert first.start and first.end and first.start <= first.end <= last.start, job.attempts
    assert first.warned_at is not None and first.recomputed_s is None and last.recomputed_s == 0.0
    resumed_at = int(wait_for(d / "started-acct.1", 5).split()[2])
    assert 0 < resumed_at < 80
    assert job.job_id not in cluster.squeue_ids()


def test_a_preempted_2_node_torchrun_loop_resumes_from_rank_0s_checkpoint(preempted: Dict[str, Any],
                                                                          cluster: Any) -> None:
    """torchrun with requeue: the warning reaches every worker while the torchrun agents stay up (without
    hpcbridge.torchrun_agent, USR2 ended torch's agents and srun ended the step: docs/requeue.md), rank 0 saves on
    the warning, the job is requeued and both ranks resume from rank 0's checkpoint; every rank's result right."""
    d, job = preempted["dir"], preempted["torchrun"]
    want = float(sum(2 * step + 1 for step in range(60)))
    assert job.results(timeout=300) == [want] * 2
    assert [a.ended for a in job.attempts] == ["PREEMPTED", "done"], job.attempts
    # rank 0 saved on the warning (its last save of the first run came after it), not only at its last k steps
    saved_at, _ = saves(Path(JobFolder(job.folder).checkpoint_marker(0)).read_bytes())[0]
    warned_at = job.attempts[0].warned_at
    assert saved_at is not None and warned_at is not None and saved_at >= warned_at, (saved_at, warned_at)
    # the agents were not ended by the warning (torch's agent does not handle USR2: hpcbridge.torchrun_agent does)
    stderr = job.stderr()
    assert "User defined signal 2" not in stderr, stderr[-3000:]
    assert stderr.count("hpcbridge: torchrun: the workers saved and left to be requeued") == 2, stderr[-3000:]
    assert " -m hpcbridge.torchrun_agent " in job.script
    resumed = {wait_for(d / f"started-tr.{rank}.1", 5).split()[2] for rank in range(2)}
    assert len(resumed) == 1 and 0 < int(resumed.pop()) < 60  # both ranks from the same (rank 0's) checkpoint
    assert job.job_id not in cluster.squeue_ids()
