"""The core on the live Slurm test cluster (site "testcluster"), as the cluster user running pytest."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import getpass
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from hpcbridge import Executor, JobState, load_site
from hpcbridge.errors import (
    JobCancelledError,
    JobDependencyError,
    JobTimeoutError,
    RemoteEnvironmentError,
    ResourceError,
    SchedulerError,
    SerializationError,
    UnknownSiteError,
)

NODES = {"node1", "node2", "node3"}


def where(x):
    return {"x": x, "host": socket.gethostname(), "user": getpass.getuser(), "pid": os.getpid()}


def square(x):
    return x * x


def fail(msg):
    print("about to fail", file=sys.stderr)
    raise ValueError(msg)


def wait_for_file(path, value, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError(path)
        time.sleep(0.1)
    return value


def sleep_and_touch(path, seconds):
    with open(path, "w") as fh:
        fh.write(socket.gethostname())
    time.sleep(seconds)
    return "slept"


def test_submit_runs_on_a_compute_node_as_the_user(ex, cluster):
    job = ex.submit(where, 5)
    out = job.result(timeout=180)
    assert out["x"] == 5 and out["host"] in NODES and out["user"] == getpass.getuser()
    assert job.job_id.isdigit() and job.state == JobState.COMPLETED
    rec = cluster.wait_job(job.job_id)
    assert (rec.state, rec.exit_code) == ("COMPLETED", "0:0")
    deadline = time.time() + 60
    while rec.sacct["JobName"] == "allocation" and time.time() < deadline:
        # slurmdbd's placeholder name when a step's record arrives before the job's own (a 1-second job)
        time.sleep(1)
        rec = cluster.wait_job(job.job_id)
    assert rec.sacct["JobName"] == "hpcb-where"


def test_remote_exception_with_traceback_and_stderr_tail(ex, cluster):
    job = ex.submit(fail, "bad input 42")
    with pytest.raises(ValueError, match="bad input 42") as info:
        job.result(timeout=180)
    remote = str(info.value.__cause__)
    assert "Remote traceback (job " + job.job_id in remote and "in fail" in remote
    assert "about to fail" in remote  # the stderr tail
    assert job.state == JobState.FAILED
    assert cluster.wait_job(job.job_id).state == "FAILED"  # the job exits non-zero: sacct agrees


def test_map_of_200_calls_is_one_array_job(ex, cluster):
    jobs = ex.map_jobs(square, range(200))
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1
    assert [j.job_id.split("_")[1] for j in jobs] == [str(i) for i in range(200)]
    assert [j.result(timeout=600) for j in jobs] == [i * i for i in range(200)]
    assert ex._backend.poller.queries <= 20  # one batched sacct per tick with back-off, not one per job
    rows = cluster.sacct_array(jobs[0].job_id.split("_")[0], 200)
    assert set(rows.values()) == {"COMPLETED"}


def test_map_yields_in_order(ex):
    assert list(ex.map(square, range(6), timeout=300)) == [0, 1, 4, 9, 16, 25]


def test_bundling_runs_several_calls_per_array_task(ex, cluster):
    jobs = ex.map_jobs(where, range(40), chunksize=10)
    results = [j.result(timeout=300) for j in jobs]
    assert [r["x"] for r in results] == list(range(40))
    assert len({j.job_id for j in jobs}) == 4
    # calls bundled in one task ran in the same process
    assert len({r["pid"] for r in results[:10]}) == 1
    array_id = jobs[0].job_id.split("_")[0]
    assert sorted(cluster.sacct_array(array_id, 4)) == [f"{array_id}_{i}" for i in range(4)]


def test_batch_context_is_one_array(ex):
    with ex.batch():
        a = ex.submit(square, 3)
        b = ex.submit(where, 4)
    assert a.job_id.split("_")[0] == b.job_id.split("_")[0]
    assert a.result(300) == 9 and b.result(300)["x"] == 4


def test_cancel_a_running_job_removes_it_from_the_queue(ex, cluster, cluster_workdir):
    marker = cluster_workdir / "started"
    job = ex.submit(sleep_and_touch, str(marker), 600)
    deadline = time.time() + 120
    while not marker.exists():
        assert time.time() < deadline, "the job never started"
        time.sleep(0.2)
    assert job.job_id in cluster.squeue_ids()
    assert job.cancel() is True
    assert job.cancelled() and job.state == JobState.CANCELLED
    with pytest.raises(concurrent.futures.CancelledError):
        job.result(timeout=5)
    deadline = time.time() + 60
    while job.job_id in cluster.squeue_ids():
        assert time.time() < deadline, "the job is still in the queue after cancel()"
        time.sleep(0.5)
    assert cluster.wait_job(job.job_id).state == "CANCELLED"


def test_a_job_cancelled_outside_raises_job_cancelled_error(ex, cluster, cluster_workdir):
    marker = cluster_workdir / "started"
    job = ex.submit(sleep_and_touch, str(marker), 600)
    deadline = time.time() + 120
    while not marker.exists():
        assert time.time() < deadline, "the job never started"
        time.sleep(0.2)
    cluster.run(["scancel", job.job_id])
    with pytest.raises(JobCancelledError, match=f"job {job.job_id} was cancelled") as info:
        job.result(timeout=180)
    assert info.value.state.startswith("CANCELLED") and job.state == JobState.CANCELLED


def test_walltime_kill_raises_timeout_error(ex, cluster):
    job = ex.with_resources(walltime=1).submit(time.sleep, 600)
    with pytest.raises(JobTimeoutError, match=f"job {job.job_id} hit its walltime") as info:
        job.result(timeout=300)
    assert info.value.state == "TIMEOUT" and "DUE TO TIME LIMIT" in info.value.stderr_tail


def test_attach_from_a_second_process(ex, cluster_workdir):
    marker = cluster_workdir / "go"
    job = ex.submit(wait_for_file, str(marker), {"answer": 42})
    code = (
        "import json, sys, hpcbridge\n"
        f"job = hpcbridge.attach({job.job_id!r}, site='testcluster')\n"
        "print('attached', job.job_id, flush=True)\n"
        "print(json.dumps(job.result(timeout=300)))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout.readline().split() == ["attached", job.job_id]
    marker.write_text("")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"answer": 42}
    assert job.result(300) == {"answer": 42}


def test_accounting_off_uses_squeue_and_scontrol(cluster, cluster_workdir):
    site = dataclasses.replace(load_site("testcluster"), accounting=False)
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    assert ex._backend.scheduler.status_query(["1"], 0, 0, ex._backend.facts).argv[0] == "squeue"
    assert list(ex.map(square, range(5), timeout=300)) == [0, 1, 4, 9, 16]
    marker = cluster_workdir / "started"
    job = ex.submit(sleep_and_touch, str(marker), 600)
    deadline = time.time() + 120
    while not marker.exists():
        assert time.time() < deadline
        time.sleep(0.2)
    cluster.run(["scancel", job.job_id])
    with pytest.raises(JobCancelledError):
        job.result(timeout=180)


def talk():
    print("hello from the job")
    print("warning from the job", file=sys.stderr)
    return 1


def test_stdout_and_stderr(ex):
    job = ex.submit(talk)
    assert job.result(180) == 1
    assert job.stdout() == "hello from the job\n"
    assert "warning from the job\n" in job.stderr()


def submit_child():
    """Runs inside an array task: submits a plain job from within the job, as a notebook on JupyterHub does."""
    from hpcbridge import Executor

    parent = os.environ.get("SLURM_ARRAY_TASK_ID")
    child = Executor(site="testcluster").submit(_child_env)
    return {"parent_task": parent, "child": child.result(timeout=240)}


def _child_env():
    return {k: os.environ.get(k) for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_JOB_ID", "HPCBRIDGE_TASK")}


def test_submission_from_inside_a_job_does_not_leak_the_parent_job(ex):
    jobs = ex.map_jobs(lambda _: submit_child(), range(2))
    out = jobs[1].result(timeout=400)
    assert out["parent_task"] == "1"
    assert out["child"] == {"SLURM_ARRAY_TASK_ID": None, "SLURM_ARRAY_JOB_ID": None, "HPCBRIDGE_TASK": "0"}


# -- bad input: a clear error, and nothing submitted or left behind ------------------------------------------


def test_unpicklable_argument(ex, cluster, cluster_workdir):
    before = cluster.squeue_ids()
    with pytest.raises(SerializationError, match=r"cannot pickle argument 0 of .*square \(generator\)"):
        ex.submit(square, (i for i in range(3)))
    cluster.assert_nothing_left(before, cluster_workdir / "jobs")


def test_unknown_resource_and_nonsense_values(cluster):
    with pytest.raises(ResourceError, match=r"unknown resource 'cpus' \(did you mean 'cpus_per_task'\?\)"):
        Executor(site="testcluster", cpus=4)
    with pytest.raises(ResourceError, match="walltime='soon' is not a duration"):
        Executor(site="testcluster", walltime="soon")
    with pytest.raises(ResourceError, match="mem_gb='a lot' is not a memory size"):
        Executor(site="testcluster", mem_gb="a lot")


def test_scheduler_rejection_carries_argv_exit_code_and_stderr(cluster, cluster_workdir):
    before = cluster.squeue_ids()
    # a constraint no node has: only slurmctld can know, so sbatch itself refuses
    ex = Executor(site="testcluster", folder=str(cluster_workdir / "jobs"), extra_directives=["--constraint=tpu9"])
    with pytest.raises(SchedulerError) as info:
        ex.submit(square, 1)
    err = info.value
    assert err.argv[:2] == ["sbatch", "--parsable"] and err.exit_code == 1
    assert "invalid feature specification" in err.stderr.lower()
    assert "could not submit the job on site 'testcluster'" in str(err) and "Invalid feature" in str(err)
    cluster.assert_nothing_left(before, cluster_workdir / "jobs")


def test_unknown_site_lists_the_known_ones():
    with pytest.raises(UnknownSiteError, match=r"unknown site 'testclustr' \(did you mean 'testcluster'\?\)") as info:
        Executor(site="testclustr")
    assert "testcluster" in str(info.value) and "local" in str(info.value)


def test_missing_python_on_the_cluster(cluster, cluster_workdir):
    before = cluster.squeue_ids()
    site = dataclasses.replace(load_site("testcluster"), python="/opt/nowhere/bin/python3")
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    with pytest.raises(RemoteEnvironmentError, match=r"the cluster-side python '/opt/nowhere/bin/python3'") as info:
        ex.submit(square, 1)
    assert "set `python = " in str(info.value)
    cluster.assert_nothing_left(before, cluster_workdir / "jobs")


def test_mismatched_python_on_the_cluster(cluster, cluster_workdir):
    site = dataclasses.replace(load_site("testcluster"), python="/usr/bin/python3")
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    with pytest.raises(RemoteEnvironmentError, match="cannot run these jobs: .*cloudpickle is not installed there"):
        ex.submit(square, 1)


def test_a_slurmctld_outage_never_fails_a_job(cluster, cluster_workdir):
    """Status queries fail while slurmctld is down; they are retried, and no job is marked failed.

    Slurm's clients retry a lost controller for MessageTimeout (10 s) before failing, so the outage is longer.
    """
    site = dataclasses.replace(load_site("testcluster"), accounting=False, poll_interval_max_s=2.0)
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    marker = cluster_workdir / "go"
    jobs = ex.map_jobs(wait_for_file, [str(marker)] * 3, [10, 20, 30])
    deadline = time.time() + 120
    while not all(j.state == JobState.RUNNING for j in jobs):
        assert time.time() < deadline, [j.state for j in jobs]
        time.sleep(0.2)
    outage = subprocess.Popen(cluster.ctl("slurmctld-outage", "25"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = outage.communicate(timeout=180)
    assert outage.returncode == 0, out
    assert ex._backend.poller.failed_queries >= 1, "no status query failed during the outage"
    assert not any(j.done() for j in jobs) and all(j.state != JobState.FAILED for j in jobs)
    marker.write_text("")
    assert [j.result(timeout=300) for j in jobs] == [10, 20, 30]


def test_an_sbatch_that_hangs_after_submitting_is_not_submitted_twice(cluster, cluster_workdir, monkeypatch, caplog):
    """sbatch submits, then hangs (an overloaded login node, a stuck filesystem); hpcbridge gives up on it after
    COMMAND_TIMEOUT_S. The job exists: it is found by its tag, not submitted a second time."""
    from hpcbridge import submit_once

    wrappers = cluster_workdir / "bin"
    wrappers.mkdir()
    sbatch = wrappers / "sbatch"
    sbatch.write_text('#!/bin/sh\n/usr/bin/sbatch "$@" || exit\nexec sleep 90\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    monkeypatch.setattr(submit_once, "COMMAND_TIMEOUT_S", 6.0)
    ex = Executor(site="testcluster", folder=str(cluster_workdir / "jobs"), name="hung-sbatch")
    before = cluster.squeue_ids()
    started = time.time()
    job = ex.submit(square, 12)
    assert time.time() - started < 60  # it gave up on the hung sbatch (90 s) and found the job
    assert job.result(timeout=120) == 144
    assert any("was found by its tag" in r.getMessage() and "timed out after 6.0 s" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    # one job carries this submission's tag: the one the future follows
    assert cluster.jobs_tagged(ex._submissions[0].tag, job.job_id) == [job.job_id]
    assert cluster.squeue_ids() - before <= {job.job_id}


def test_map_longer_than_the_sites_max_array_size_is_split(cluster, cluster_workdir):
    site = dataclasses.replace(load_site("testcluster"), max_array_size=40)
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    jobs = ex.map_jobs(square, range(90), chunksize=1)
    arrays = sorted({j.job_id.split("_")[0] for j in jobs}, key=int)
    assert len(arrays) == 3
    assert [j.result(timeout=600) for j in jobs] == [i * i for i in range(90)]
    assert [len(cluster.sacct_array(a, n)) for a, n in zip(arrays, (40, 40, 10))] == [40, 40, 10]


def write_later(path, seconds):
    time.sleep(seconds)
    with open(path, "w") as fh:
        fh.write(f"written on {socket.gethostname()}")
    return time.time()


def read_now(*paths):
    texts = []
    for path in paths:
        with open(path) as fh:
            texts.append(fh.read().split(" on ")[0])
    return texts, time.time()


def test_jobs_after_others_start_only_once_those_completed(ex, cluster, cluster_workdir):
    paths = [str(cluster_workdir / f"part{i}") for i in range(3)]
    parts = ex.map_jobs(write_later, paths, [4, 6, 5])  # one array job; the dependent waits for all of it
    single = ex.submit(write_later, str(cluster_workdir / "single"), 3)
    after = ex.with_resources(after=[*parts, single])
    assert after.resources.after == (parts[0].job_id.split("_")[0], single.job_id)
    reader = after.submit(read_now, *paths, str(cluster_workdir / "single"))
    assert f"#SBATCH --dependency=afterok:{after.resources.after[0]}:{single.job_id}\n" in reader.script
    # the reader waits (Slurm says why) while the writers run
    squeue = cluster.run(["squeue", "--noheader", "--format=%T|%r", "--jobs", reader.job_id], timeout=30).stdout
    assert squeue.strip() == "PENDING|Dependency", squeue
    texts, read_at = reader.result(timeout=300)
    assert texts == ["written"] * 4  # every file was there: it ran after all four writers
    assert read_at >= max(j.result(timeout=60) for j in [*parts, single])


def test_a_job_after_a_failed_one_is_cancelled_and_says_so(ex, cluster):
    failing = ex.submit(fail, "first step broke")
    dependent = ex.with_resources(after=[failing]).submit(square, 3)
    with pytest.raises(JobDependencyError) as info:
        dependent.result(timeout=300)
    assert str(info.value) == (
        f"job {dependent.job_id} never ran: it was to start after {failing.job_id} completed successfully, and the "
        f"scheduler cancelled it (CANCELLED) because that can no longer happen (a job it waited for failed, was "
        "cancelled or timed out)"
    )
    assert info.value.after == (failing.job_id,) and dependent.state == JobState.CANCELLED
    with pytest.raises(ValueError, match="^first step broke$"):
        failing.result(timeout=60)
    # nothing left in the queue: Slurm cancelled the dependent (--kill-on-invalid-dep) instead of keeping it
    # pending for ever (DependencyNeverSatisfied)
    assert dependent.job_id not in cluster.squeue_ids()
    assert cluster.wait_job(dependent.job_id).state == "CANCELLED"
    # and a job after one known to have failed is refused before it is submitted
    with pytest.raises(ResourceError, match=rf"^after: job {failing.job_id} failed \(FAILED\): a job to run after "
                                            "it would never start$"):
        ex.with_resources(after=[failing])


def test_without_accounting_a_dependency_kill_and_a_users_cancel_are_told_apart(cluster, cluster_workdir):
    """squeue prints a plain CANCELLED for both; the reason (DependencyNeverSatisfied vs the pending reason
    Dependency) tells which."""
    site = dataclasses.replace(load_site("testcluster"), accounting=False, poll_interval_max_s=2.0)
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    failing = ex.submit(fail, "first step broke")
    doomed = ex.with_resources(after=[failing]).submit(square, 3)
    marker = cluster_workdir / "go"
    holder = ex.submit(wait_for_file, str(marker), "held", 240)
    waiting = ex.with_resources(after=[holder]).submit(square, 4)
    with pytest.raises(JobDependencyError, match=rf"^job {doomed.job_id} never ran: it was to start after "
                                                 rf"{failing.job_id} completed successfully"):
        doomed.result(timeout=300)
    assert ex._backend.facts.accounting is False  # the answer came from squeue, not sacct
    deadline = time.time() + 60
    while cluster.run(["squeue", "--noheader", "--format=%r", "--jobs", waiting.job_id],
                      timeout=30).stdout.strip() != "Dependency":
        assert time.time() < deadline
        time.sleep(0.5)
    cluster.run(["scancel", waiting.job_id])
    with pytest.raises(JobCancelledError) as info:
        waiting.result(timeout=120)
    assert type(info.value) is JobCancelledError
    assert str(info.value) == f"job {waiting.job_id} was cancelled (state CANCELLED)"
    marker.write_text("")
    assert holder.result(timeout=120) == "held"
