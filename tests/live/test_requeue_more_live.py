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
from hpcbridge.sites.limits import Partition

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
    # every job runs (the single-node ones on node3), a few steps in: preempt them
    wait_for(d / "started-ctr.0", 240)
    time.sleep(4)
    cluster.run(["sbatch", "--parsable", "--partition=urgent", f"--nodelist={SINGLE_NODE}", "--exclusive",
                 "--time=1", "--output=/dev/null", "--wrap=sleep 3"], cwd=d, timeout=30)
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
