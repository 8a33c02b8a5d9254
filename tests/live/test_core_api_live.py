"""More of the core API on the live cluster (site "testcluster"): an unpicklable function, Job.exception(), attach()
after the submitting process exited, and Executor.map itself with 200 calls."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from hpcbridge import JobState, attach
from hpcbridge.errors import SerializationError

NODES = {"node1", "node2", "node3"}


def square(x):
    return x * x


def fail(msg):
    raise ValueError(msg)


def test_an_unpicklable_function_is_refused_before_anything_is_submitted(ex, cluster, cluster_workdir):
    before = cluster.squeue_ids()
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"^cannot pickle the function .*<lambda>: TypeError: cannot pickle "
                                                 r"'_thread.lock' object\. Pass only picklable values"):
        ex.submit(lambda x: (lock, x), 1)
    numbers = (i for i in range(3))
    with pytest.raises(SerializationError, match=r"^cannot pickle the function .*<lambda> in call 0 of the map: "
                                                 r"TypeError: cannot pickle 'generator' object"):
        ex.map(lambda x: next(numbers) + x, range(3))
    cluster.assert_nothing_left(before, cluster_workdir / "jobs")  # nothing submitted, and no folder left


def test_job_exception_returns_the_remote_exception_or_none(ex):
    with ex.batch():  # one array job of two tasks
        ok = ex.submit(square, 7)
        bad = ex.submit(fail, "bad value 13")
    assert ok.exception(timeout=180) is None and ok.result() == 49
    exc = bad.exception(timeout=180)
    assert type(exc) is ValueError and str(exc) == "bad value 13"
    assert f"Remote traceback (job {bad.job_id}, host node" in str(exc.__cause__) and "in fail" in str(exc.__cause__)
    assert bad.state == JobState.FAILED
    with pytest.raises(concurrent.futures.TimeoutError):  # exception(timeout) on a job still running times out
        ex.submit(time.sleep, 60).exception(timeout=0.5)


def test_attach_after_the_submitting_process_exited(cluster, cluster_workdir):
    """The submitting Python process exits right after ``submit``; this one attaches by job id (the registry)
    and gets the result, computed after the submitter was gone."""
    marker = cluster_workdir / "go"
    submitter = textwrap.dedent(f"""
        import hpcbridge

        def wait_then_answer(path):
            import os, socket, time
            while not os.path.exists(path):
                time.sleep(0.2)
            return {{"answer": 42, "host": socket.gethostname()}}

        ex = hpcbridge.Executor(site="testcluster", folder={str(cluster_workdir / "jobs")!r})
        print(ex.submit(wait_then_answer, {str(marker)!r}).job_id)
    """)
    p = subprocess.run([sys.executable, "-c", submitter], capture_output=True, text=True, timeout=180,
                       env=os.environ)  # the same registry (HPCBRIDGE_HOME)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip()
    assert job_id.isdigit()
    job = attach(job_id, site="testcluster")  # the submitter has exited (subprocess.run waited for it)
    assert job.job_id == job_id and not job.done()
    assert job.script.startswith("#!/bin/bash\n") and "__main__.wait_then_answer, 1 call" in job.script
    marker.write_text("")
    out = job.result(timeout=300)
    assert out["answer"] == 42 and out["host"] in NODES
    assert job.state == JobState.COMPLETED


def test_executor_map_of_200_calls_is_one_array_job(ex, cluster):
    results = ex.map(square, range(200), timeout=600)
    assert len(ex._submissions) == 1  # submitted at once, as one array job of 200 tasks
    sub = ex._submissions[0]
    assert sub.is_array and sub.chunks == [1] * 200
    assert list(results) == [i * i for i in range(200)]
    assert ex._backend.poller.queries <= 20  # one batched sacct per tick, with back-off
    assert set(cluster.sacct_array(sub.job_id, 200).values()) == {"COMPLETED"}
