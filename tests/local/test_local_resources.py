"""What the built-in ``local`` site does with each resource (docs/site-configs.md, "The local site"): walltime and
memory enforced, CPUs given as an affinity mask, the name shown where the runner lists jobs, the rest refused
before anything is submitted. Real processes, watched from outside."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from hpcbridge import Executor, JobState, environment, load_site
from hpcbridge.errors import ConfigError, JobOutOfMemoryError, JobTimeoutError, ResourceError, SchedulerError

CPUS = sorted(os.sched_getaffinity(0))


@pytest.fixture
def jobs(tmp_path):
    return tmp_path / "jobs"


@pytest.fixture
def ex(jobs):
    return Executor(site="local", folder=str(jobs))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.05)


def _wait_for_file(path, seconds=30):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


# -- walltime: enforced, as on a cluster --------------------------------------------------------------------------
def _sleep_with_a_stubborn_child(pids_file, seconds):
    """Sleep, with a child that ignores SIGTERM (only the SIGKILL that follows ends it); both pids in a file."""
    child = subprocess.Popen(["bash", "-c", f"trap '' TERM; sleep {seconds}"])
    with open(pids_file + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}")
    os.rename(pids_file + ".tmp", pids_file)
    print("working on it", file=sys.stderr, flush=True)
    time.sleep(seconds)


def test_a_job_past_its_walltime_ends_timeout_and_its_processes_are_gone(ex, tmp_path):
    pids_file = str(tmp_path / "pids")
    start = time.monotonic()
    job = ex.with_resources(walltime="00:00:02").submit(_sleep_with_a_stubborn_child, pids_file, 30)
    with pytest.raises(JobTimeoutError, match=rf"^job {job.job_id} hit its walltime \(state TIMEOUT\)") as info:
        job.result(timeout=60)
    took = time.monotonic() - start
    assert 2 <= took < 12, took  # 2 s of walltime, then SIGTERM, and SIGKILL 3 s later for the stubborn child
    assert job.state == JobState.TIMEOUT and job.native_state == "TIMEOUT"
    assert info.value.stderr_tail == (
        "working on it\n"
        f"hpcbridge local runner: *** job {job.job_id} stopped: it reached its walltime of 00:00:02 ***"
    )
    pids = [int(p) for p in open(pids_file).read().split()]
    _wait_gone(pids, 5)  # the whole process group, the child that ignored SIGTERM too


def test_walltime_is_per_array_task_and_a_job_within_it_completes(ex):
    jobs = ex.with_resources(walltime="00:00:03").map_jobs(time.sleep, [0, 30])
    assert jobs[0].result(timeout=60) is None and jobs[0].state == JobState.COMPLETED
    with pytest.raises(JobTimeoutError, match=rf"job {jobs[1].job_id} hit its walltime"):
        jobs[1].result(timeout=60)
    assert jobs[1].job_id.endswith("_1") and jobs[1].stderr().endswith(
        f"*** job {jobs[1].job_id} stopped: it reached its walltime of 00:00:03 ***\n")


# -- mem_gb: enforced as Slurm enforces it without cgroups --------------------------------------------------------
def _child_that_holds(mb, pid_file):
    """A child process holds ``mb`` MB (written, so resident) until it is killed: the job's memory is its
    processes', not only the worker's."""
    code = f"import os, time; b = b'x' * ({mb} << 20); open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    subprocess.run([sys.executable, "-c", code])


def test_a_job_over_its_memory_ends_out_of_memory(ex, tmp_path):
    pid_file = str(tmp_path / "pid")
    start = time.monotonic()
    job = ex.with_resources(mem_gb="100MB").submit(_child_that_holds, 300, pid_file)
    with pytest.raises(JobOutOfMemoryError, match=rf"^job {job.job_id} ran out of memory \(state OUT_OF_MEMORY\)") \
            as info:
        job.result(timeout=60)
    assert time.monotonic() - start < 45  # sampled every 0.5 s; generous for a loaded 2-core machine
    assert job.state == JobState.OUT_OF_MEMORY
    assert re.fullmatch(rf"hpcbridge local runner: \*\*\* job {job.job_id} killed: its processes used (\d+) MB of "
                        r"memory, more than its mem_gb \(100 MB\) \*\*\*", info.value.stderr_tail)
    assert 100 < int(re.search(r"used (\d+) MB", info.value.stderr_tail).group(1)) < 1000
    _wait_gone([int(open(pid_file).read())], 15)


def _hold(mb):
    b = b"x" * (mb << 20)
    time.sleep(1.5)  # three looks at its memory
    return len(b) >> 20


def test_a_job_within_its_memory_completes(ex):
    assert ex.with_resources(mem_gb=1).submit(_hold, 50).result(timeout=60) == 50


# -- cpus_per_task: an affinity mask of that many CPUs ------------------------------------------------------------
def _cpus_seen(barrier_dir=None, n=0):
    """The CPUs this job may run on and what hpcbridge.environment() says; with a barrier, once ``n`` tasks run."""
    if barrier_dir:
        open(os.path.join(barrier_dir, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(barrier_dir)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    return sorted(os.sched_getaffinity(0)), environment().cpus_per_task


@pytest.mark.skipif(len(CPUS) < 2, reason="needs a machine with 2 CPUs or more")
def test_cpus_per_task_is_the_jobs_affinity_mask(ex):
    assert ex.with_resources(cpus_per_task=2).submit(_cpus_seen).result(timeout=60) == (CPUS[:2], 2)
    assert ex.submit(_cpus_seen).result(timeout=60)[1] == 1
    assert len(ex.submit(_cpus_seen).result(timeout=60)[0]) == 1


@pytest.mark.skipif(len(CPUS) < 2, reason="needs a machine with 2 CPUs or more")
def test_tasks_running_at_once_get_cpus_of_their_own(ex, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    jobs = ex.map_jobs(_cpus_seen, [str(barrier)] * 2, [2] * 2)  # both run at once: each waits for the other
    (a, _), (b, _) = [j.result(timeout=60) for j in jobs]
    assert len(a) == len(b) == 1 and a != b


def test_more_cpus_than_this_machine_has_are_refused_and_nothing_is_left(ex, jobs):
    n = len(CPUS) + 1
    with pytest.raises(SchedulerError) as info:
        ex.with_resources(cpus_per_task=n).submit(abs, -1)
    assert str(info.value).endswith(
        f"stderr: local runner: this job asks for {n} CPUs per task (cpus_per_task={n} x tasks_per_node=1) and this "
        f"machine has {len(CPUS)}: ask for at most {len(CPUS)} for a run on the local site, or use a cluster site")
    assert os.listdir(jobs) == []


# -- name: where the runner lists jobs ----------------------------------------------------------------------------
def _wait_for(path):
    _wait_for_file(path)
    return "done"


def test_the_jobs_name_is_shown_where_the_runner_lists_jobs(ex, jobs, tmp_path):
    go = tmp_path / "go"
    job = ex.with_resources(name="debug-run").submit(_wait_for, str(go))
    try:
        runner_pid = int(open(os.path.join(job.folder, "local", "runner.pid")).read())
        with open(f"/proc/{runner_pid}/cmdline", "rb") as fh:  # what ps shows
            assert b"\0--job-name=debug-run\0" in fh.read()
        status = subprocess.run(
            [sys.executable, "-m", "hpcbridge.schedulers.local_runner", "status", "--root", str(jobs), job.job_id],
            capture_output=True, text=True, timeout=60, check=True)
        assert re.fullmatch(rf"{job.job_id}\|(PENDING|RUNNING)\|\|debug-run\n", status.stdout), status.stdout
    finally:
        go.write_text("")
    assert job.result(timeout=60) == "done"


# -- refused: what this machine has none of -----------------------------------------------------------------------
DROP = "drop it (the keyword, or the site-config's [defaults]) for a run on this machine, or use a cluster site"
REFUSED = [
    ({"partition": "gpu"}, f"partition='gpu': the local site has no partitions; {DROP}"),
    ({"account": "proj42"}, f"account='proj42': the local site has no accounts to charge; {DROP}"),
    ({"qos": "high"}, f"qos='high': the local site has no QOS; {DROP}"),
    ({"gpus_per_node": 1},
     f"gpus_per_node=1: the local site hands out no GPUs (a job sees this machine's GPUs as they are); {DROP}"),
    ({"extra_directives": ["--constraint=a100"]},
     f"extra_directives=['--constraint=a100']: the local site has no scheduler to read directives; {DROP}"),
    ({"nodes": 2}, "nodes=2: the local site is one machine; use nodes=1, or a cluster site for more"),
]


@pytest.mark.parametrize(("resources", "message"), REFUSED, ids=[next(iter(r)) for r, _ in REFUSED])
def test_what_the_local_site_has_none_of_is_refused_before_anything_is_submitted(jobs, resources, message):
    with pytest.raises(ResourceError, match=f"^{re.escape(message)}$"):
        Executor(site="local", folder=str(jobs), **resources)
    ex = Executor(site="local", folder=str(jobs))
    with pytest.raises(ResourceError, match=f"^{re.escape(message)}$"):
        ex.with_resources(**resources)
    assert not jobs.exists()  # nothing written, nothing submitted
    assert ex._submissions == []


def test_a_local_site_config_whose_defaults_ask_for_a_partition_is_refused_when_loaded():
    with pytest.raises(ConfigError, match=re.escape(
            "the defaults do not fit: partition='debug': the local site has no partitions; " + DROP)):
        load_site("local", defaults={"partition": "debug"})


def test_a_job_stopped_at_its_walltime_gets_sigterm_first_then_sigkill(ex, tmp_path):
    """As on Slurm: SIGTERM first (a job may use the grace period to save its state), SIGKILL 3 s later."""
    marker = tmp_path / "terminated"
    job = ex.with_resources(walltime="00:00:02").submit(_note_sigterm_and_go_on, str(marker))
    with pytest.raises(JobTimeoutError, match=rf"^job {job.job_id} hit its walltime"):
        job.result(timeout=60)
    assert marker.read_text() == "SIGTERM"


def _note_sigterm_and_go_on(path):
    def handler(signum, frame):
        with open(path, "w") as fh:
            fh.write(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    time.sleep(30)  # resumes after the handler: only SIGKILL ends it
