"""Jobs the scheduler ends (memory, node failure, preemption), the cluster-side version check with a real second
python, and the accounting-off status path through ``scontrol show job``; on the live cluster (site "testcluster").

How the cluster makes each fault real (tests/cluster/up, docs/testcluster.md): memory is enforced without cgroups
by the accounting poll (``JobAcctGatherParams=OverMemoryKill``, every 2 s); ``tests/cluster/ctl node-fail JOBID``
sets the job's node DOWN and resumes it; the hidden partition ``urgent`` (PriorityTier 10, ``PreemptMode=CANCEL``)
preempts jobs of ``debug``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time

import cloudpickle
import pytest

from hpcbridge import Executor, JobState, __version__, attach, load_site
from hpcbridge.errors import (
    JobCancelledError,
    JobLostError,
    JobNodeFailError,
    JobOutOfMemoryError,
    JobPreemptedError,
    RemoteEnvironmentError,
)
from hpcbridge.registry import Registry

NODES = {"node1", "node2", "node3"}
#: a second cluster-side python whose cloudpickle is a major version behind (made by tests/stage)
OLD_CLOUDPICKLE_PYTHON = "/opt/hpcbridge-test/venv-cloudpickle2/bin/python"


def square(x):
    return x * x


def hold_memory(mb, seconds):
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):  # touch every page: resident, as a real array would be
        block[i] = 1
    time.sleep(seconds)
    return len(block)


def sleep_and_touch(path, seconds):
    with open(path, "w") as fh:
        fh.write(socket.gethostname())
    time.sleep(seconds)
    return "slept"


def wait_started(marker, timeout=180):
    deadline = time.time() + timeout
    while not marker.exists() or not marker.read_text():
        assert time.time() < deadline, "the job never started"
        time.sleep(0.2)
    return marker.read_text()


# -- the cluster-side version check -------------------------------------------------------------------------


def test_an_incompatible_cloudpickle_on_the_cluster(cluster, cluster_workdir):
    """A real cluster-side venv with cloudpickle 2.2.1 and hpcbridge: refused before anything is submitted, with
    both versions and the fix. (The Python major.minor branch is a unit test: the cluster users have only one
    CPython minor here; see test_backend_status.py.)"""
    assert os.access(OLD_CLOUDPICKLE_PYTHON, os.X_OK), "tests/stage makes this venv"
    before = cluster.squeue_ids()
    site = dataclasses.replace(load_site("testcluster"), python=OLD_CLOUDPICKLE_PYTHON)
    for _ in range(2):  # a failed check is not remembered: a second executor checks (and fails) again
        with pytest.raises(RemoteEnvironmentError) as info:
            Executor(site=site, folder=str(cluster_workdir / "jobs")).submit(square, 1)
        assert str(info.value) == (
            f"site 'testcluster': the cluster-side python {OLD_CLOUDPICKLE_PYTHON} cannot run these jobs: "
            f"cloudpickle 2.2.1 there, {cloudpickle.__version__} here. Fix: install matching versions there "
            f"({OLD_CLOUDPICKLE_PYTHON} -m pip install 'hpcbridge=={__version__}' "
            f"'cloudpickle=={cloudpickle.__version__}'), or set `python = \"/path/to/python3.11\"` in the "
            "site-config of 'testcluster'"
        )
    cluster.assert_nothing_left(before, cluster_workdir / "jobs")


# -- killed by the scheduler --------------------------------------------------------------------------------


def test_a_job_over_its_memory_is_killed_and_raises_out_of_memory(ex, cluster):
    """Slurm 22.05's accounting poll kills the step (slurmstepd: "exceeded memory limit (...), being killed") and
    ends the job FAILED with signal 9, not OUT_OF_MEMORY (that state comes from cgroups): the Slurm adapter reads
    the kill in the job's stderr and makes it OUT_OF_MEMORY, keeping Slurm's state in the error."""
    job = ex.with_resources(mem_gb=0.1).submit(hold_memory, 400, 300)
    with pytest.raises(JobOutOfMemoryError, match=rf"^job {job.job_id} ran out of memory \(state FAILED\)") as info:
        job.result(timeout=300)
    err = info.value
    assert err.state == "FAILED" and job.state == JobState.OUT_OF_MEMORY and job.native_state == "FAILED"
    assert "exceeded memory limit (" in err.stderr_tail and "being killed" in err.stderr_tail
    assert "Exceeded job memory limit" in str(err)  # the stderr tail is in the message
    rec = cluster.wait_job(job.job_id)
    assert (rec.state, rec.exit_code) == ("FAILED", "0:9")


def test_a_node_failure_raises_node_fail_error(ex, cluster, cluster_workdir):
    """The job's node goes DOWN while it runs (tests/cluster/ctl node-fail; the node is resumed after). By default
    Slurm requeues a batch job after a node failure (JobRequeue=1) and the future follows it when it runs again;
    with --no-requeue the failure is final. --exclusive: no other job shares the node that is failed."""
    marker = cluster_workdir / "started"
    job = ex.with_resources(extra_directives=["--no-requeue", "--exclusive"]).submit(sleep_and_touch, str(marker), 600)
    node = wait_started(marker)
    assert node in NODES
    p = subprocess.run(cluster.ctl("node-fail", job.job_id), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    with pytest.raises(JobNodeFailError, match=rf"^job {job.job_id} lost a node \(state NODE_FAIL\)") as info:
        job.result(timeout=180)
    assert info.value.state == "NODE_FAIL" and job.state == JobState.NODE_FAIL
    assert f"*** JOB {job.job_id} ON {node} CANCELLED AT " in info.value.stderr_tail
    assert "DUE TO NODE FAILURE" in info.value.stderr_tail
    assert cluster.wait_job(job.job_id).state == "NODE_FAIL"
    states = cluster.run(["sinfo", "-h", "-N", "-n", node, "-o", "%t"], timeout=30).stdout.split()
    assert set(states) <= {"idle", "mix", "alloc"}, states  # the node is back for the other tests


def test_a_preempted_job_raises_preempted_error(ex, cluster, cluster_workdir):
    """A job of the higher-priority partition 'urgent' needs the whole node: Slurm cancels (PreemptMode=CANCEL) the
    hpcbridge job there, which ends PREEMPTED."""
    marker = cluster_workdir / "started"
    job = ex.with_resources(extra_directives=["--exclusive"]).submit(sleep_and_touch, str(marker), 600)
    node = wait_started(marker)
    urgent = cluster.run(
        ["sbatch", "--parsable", "--partition=urgent", f"--nodelist={node}", "--exclusive", "--time=1",
         "--output=/dev/null", "--wrap=true"],
        cwd=cluster_workdir,
        timeout=30,
    ).stdout.strip()
    with pytest.raises(JobPreemptedError, match=rf"^job {job.job_id} was preempted \(state PREEMPTED\)") as info:
        job.result(timeout=180)
    assert info.value.state == "PREEMPTED" and job.state == JobState.PREEMPTED
    assert f"*** JOB {job.job_id} ON {node} CANCELLED AT " in info.value.stderr_tail
    assert "DUE TO PREEMPTION" in info.value.stderr_tail
    assert cluster.wait_job(urgent).state == "COMPLETED"


# -- accounting off: the final state of a job squeue no longer lists comes from scontrol ----------------------

#: a squeue that lists only jobs still queued or running (what squeue shows without --states); every call is
#: logged, as is every scontrol call
_SQUEUE_LIVE_ONLY = """#!/bin/sh
echo "squeue $*" >> "{log}"
/usr/bin/squeue "$@" | awk -F'|' '$2 ~ /^(PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED)$/'
"""
_SCONTROL_LOGGED = """#!/bin/sh
echo "scontrol $*" >> "{log}"
exec /usr/bin/scontrol "$@"
"""


def test_accounting_off_takes_the_final_state_from_scontrol(cluster, cluster_workdir, monkeypatch):
    """Without accounting, a job that squeue's answer no longer lists is looked up with ``scontrol show job``.

    On this cluster Slurm 22.05's ``squeue --states=all`` keeps listing a finished job, with the state scontrol
    has, until slurmctld forgets both (MinJobAge, 300 s); so the squeue here is a wrapper that lists only jobs
    still queued or running. The job is cancelled from outside hpcbridge and writes no result: its CANCELLED
    state can only come from the real scontrol."""
    bindir = cluster_workdir / "bin"
    bindir.mkdir()
    log = cluster_workdir / "commands.log"
    for name, text in (("squeue", _SQUEUE_LIVE_ONLY), ("scontrol", _SCONTROL_LOGGED)):
        (bindir / name).write_text(text.format(log=log))
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    site = dataclasses.replace(load_site("testcluster"), accounting=False, poll_interval_max_s=2.0)
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    marker = cluster_workdir / "started"
    job = ex.submit(sleep_and_touch, str(marker), 600)
    wait_started(marker)
    deadline = time.time() + 60
    while job.state != JobState.RUNNING:  # from squeue, while it is listed
        assert time.time() < deadline, job.state
        time.sleep(0.2)
    assert not any(line.startswith("scontrol") for line in log.read_text().splitlines())
    cluster.run(["/usr/bin/scancel", job.job_id])
    with pytest.raises(JobCancelledError, match=rf"^job {job.job_id} was cancelled \(state CANCELLED\)") as info:
        job.result(timeout=120)
    assert info.value.state == "CANCELLED" and job.state == JobState.CANCELLED
    commands = log.read_text().splitlines()
    assert f"scontrol --oneliner show job {job.job_id}" in commands
    assert not any(c.startswith("squeue") and "--states=all" not in c for c in commands)  # the status query
    assert not any("sacct" in c for c in commands)


def test_accounting_off_a_job_slurmctld_has_forgotten_resolves_as_lost(cluster, cluster_workdir):
    """Without accounting, a job that ended more than MinJobAge ago is unknown to squeue and scontrol alike (both
    say "Invalid job id specified"). If it left no result, attach() must say so, not wait forever.

    The registry row stands for a submission made long ago (MinJobAge is 300 s here): its job id is one slurmctld
    has never issued, which the real squeue and scontrol answer exactly as they answer for a forgotten job."""

    newest = cluster.run(["squeue", "--noheader", "--states=all", "--format=%A"], timeout=30).stdout.split()
    job_id = str(max([int(i) for i in newest] + [0]) + 1_000_000)
    probe = cluster.run(["scontrol", "--oneliner", "show", "job", job_id], timeout=30, check=False)
    assert probe.returncode == 1 and "Invalid job id specified" in probe.stderr, probe
    folder = cluster_workdir / "jobs" / "forgotten"
    (folder / "res").mkdir(parents=True)
    (folder / "script.sh").write_text("#!/bin/bash\n")
    Registry().record(tag="forgotten", site="testcluster", job_id=job_id, folder=str(folder), is_array=False,
                      chunks=[1], ranks=1, function="square", submit_time=time.time() - 3600, task_ids=[job_id])
    site = dataclasses.replace(load_site("testcluster"), accounting=False, poll_interval_max_s=2.0)
    job = attach(job_id, site=site)
    with pytest.raises(JobLostError, match=rf"^job {job_id} ended \(gone from slurmctld .*\) without writing a "
                                           "result"):
        job.result(timeout=120)
    assert job.native_state.startswith("gone from slurmctld")
