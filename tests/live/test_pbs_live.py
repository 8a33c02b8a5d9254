"""The PBS adapter (flavour torque) on the live test cluster, through Debian's slurm-wlm-torque qsub/qstat/qdel.

Site "testcluster-pbs" (site-configs/testcluster-pbs.toml). Those commands are Perl wrappers over Slurm with
quirks the adapter handles (docs/pbs.md): qsub overrides ``#PBS -o``/``-j`` with files in the caller's current
directory, qstat has no ``-x`` and prints no exit status, an array gets a plain id and its tasks other Slurm ids,
jobs set no ``PBS_*`` variables, and ``qdel 46[1]`` cancels the whole array 46.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcbridge import Executor, JobState, load_site
from hpcbridge.errors import JobLostError, SchedulerError

CHECKOUT = Path(__file__).resolve().parents[2]
WAIT = 300  # the cluster is shared: jobs may queue behind others'


def pbs_site(templates=CHECKOUT / "templates"):
    # the checkout's templates: when pytest runs from a working tree, hpcbridge.templates is the staged copy
    return load_site("testcluster-pbs", templates=[str(templates)])


#: the line that copied_templates adds to pbs.sh.j2: a job's script shows that the site's `templates` were used
TEMPLATES_MARK = "export HPCBTEST_PBS_TEMPLATES=copied\n"


def copied_templates(folder):
    """A copy of the checkout's templates whose pbs.sh.j2 has one line more (TEMPLATES_MARK)."""
    shutil.copytree(CHECKOUT / "templates", folder)
    template = folder / "pbs.sh.j2"
    text = template.read_text()
    header = "# hpcbridge {{ version }}: {{ description }}\n"
    assert header in text
    template.write_text(text.replace(header, header + TEMPLATES_MARK))
    return folder


@pytest.fixture
def ex(cluster, cluster_workdir, monkeypatch, tmp_path):
    monkeypatch.chdir(cluster_workdir)  # where the wrapper's qsub would drop <name>.o<id> files
    # a modified copy of the templates, so that a `templates` key that were ignored would fail the tests
    return Executor(site=pbs_site(copied_templates(tmp_path / "templates")), folder=str(cluster_workdir / "jobs"))


def talk(x):
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x * x


def fail(msg):
    raise ValueError(msg)


def napping(seconds, value):
    time.sleep(seconds)
    return value


def die_or_return(x):
    if x == "die":
        os._exit(3)  # ends the task without a result file
    if x == "slow":
        time.sleep(25)
    return x


def qstat_state(cluster, job_id):
    out = cluster.run(["qstat", "-f", job_id], check=False, timeout=60).stdout
    m = re.search(r"job_state = (\S)", out)
    return m.group(1) if m else None


def test_submit_result_and_logs(ex, cluster, cluster_workdir):
    job = ex.submit(talk, 7)
    assert re.fullmatch(r"\d+", job.job_id), job.job_id
    assert job.result(timeout=WAIT) == 49
    assert job.state == JobState.COMPLETED
    assert job.stdout() == "out 7\n" and job.stderr() == "err 7\n"
    assert "#PBS -l nodes=1:ppn=1\n" in job.script and "#PBS -l walltime=00:10:00\n" in job.script
    assert "\n" + TEMPLATES_MARK in job.script  # the site's `templates` folder (a modified copy) was used
    # the scheduler's own output file is where the command line put it, none in the current directory
    assert (Path(job.folder) / "log" / "pbs.out").exists()
    assert [p.name for p in cluster_workdir.iterdir()] == ["jobs"]
    assert qstat_state(cluster, job.job_id) == "C"


def test_exception_comes_back_with_its_remote_traceback(ex):
    job = ex.submit(fail, "no such thing")
    with pytest.raises(ValueError, match="^no such thing$") as info:
        job.result(timeout=WAIT)
    assert job.state == JobState.FAILED
    remote = info.value.__cause__.text
    assert remote.startswith(f"Remote traceback (job {job.job_id}, host node"), remote
    assert ", in fail\nValueError: no such thing\n" in remote, remote


def test_cancel_leaves_nothing_in_the_queue(ex, cluster):
    job = ex.submit(napping, 300, "never")
    deadline = time.time() + WAIT
    while qstat_state(cluster, job.job_id) != "R":
        assert time.time() < deadline, f"job {job.job_id} did not start: {qstat_state(cluster, job.job_id)}"
        time.sleep(1)
    assert job.cancel() is True
    assert job.cancelled() and job.state == JobState.CANCELLED
    deadline = time.time() + 60
    while qstat_state(cluster, job.job_id) != "C":
        assert time.time() < deadline, f"job {job.job_id} is still {qstat_state(cluster, job.job_id)}"
        time.sleep(1)
    squeue = cluster.run(["squeue", "--noheader", "--jobs", job.job_id], check=False, timeout=60).stdout
    assert squeue.strip() == "", squeue


def test_bundled_array_map(ex, cluster):
    jobs = ex.map_jobs(talk, range(6), chunksize=2)  # 3 array tasks of 2 calls
    base = jobs[0].job_id.split("[")[0]
    assert [j.job_id for j in jobs] == [f"{base}[{t}]" for t in (0, 0, 1, 1, 2, 2)]
    assert [j.result(timeout=WAIT) for j in jobs] == [0, 1, 4, 9, 16, 25]
    assert jobs[5].stdout() == "out 4\nout 5\n"  # both calls of task 2


def test_one_task_of_an_array_cannot_be_cancelled_and_the_others_are_unharmed(ex):
    # this qdel would cancel the whole array for "qdel 46[1]": the adapter refuses instead
    jobs = ex.map_jobs(napping, [5, 5, 5], ["a", "b", "c"])
    with pytest.raises(SchedulerError, match=r"cannot cancel \d+\[1\] on its own: this site's qsub printed"):
        jobs[1].cancel()
    assert [j.result(timeout=WAIT) for j in jobs] == ["a", "b", "c"]


def test_cancelling_what_is_left_of_an_array_cancels_it_whole(ex, cluster):
    jobs = ex.map_jobs(napping, [1, 300, 300], ["a", "b", "c"])
    assert jobs[0].result(timeout=WAIT) == "a"
    ex.shutdown(wait=False, cancel_futures=True)  # tasks 1 and 2 are all that is left: qdel of the array's id
    assert jobs[1].cancelled() and jobs[2].cancelled()
    base = jobs[0].job_id.split("[")[0]
    deadline = time.time() + 60
    while True:
        squeue = cluster.run(["squeue", "--noheader", "--array", "--jobs", base], check=False, timeout=60).stdout
        if not squeue.strip():
            break
        assert time.time() < deadline, f"still queued after qdel {base}: {squeue}"
        time.sleep(1)


def test_a_task_that_dies_is_reported_once_its_whole_array_has_ended(ex):
    # task 2 is the array's own Slurm record (started last) and ends first; task 0 runs on after it
    slow, dead, quick = ex.map_jobs(die_or_return, ["slow", "die", "quick"])
    assert quick.result(timeout=WAIT) == "quick"
    assert slow.result(timeout=WAIT) == "slow"  # not mistaken for lost while its array's record is "C"
    with pytest.raises(JobLostError, match=r"ended \(C \(every task of array \d+ has ended"):
        dead.result(timeout=WAIT)


def test_attach_from_another_process(ex, cluster_workdir):
    jobs = ex.map_jobs(napping, [5, 6], [10, 20])
    code = (
        "import sys; from hpcbridge import attach, load_site\n"
        f"site = load_site('testcluster-pbs', templates=[{str(CHECKOUT / 'templates')!r}])\n"
        f"print(attach({jobs[1].job_id!r}, site=site).result(timeout={WAIT}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT + 60,
                         cwd=cluster_workdir)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "20\n"
    assert jobs[0].result(timeout=WAIT) == 10


def rank_and_host(x):
    return (int(os.environ["OMPI_COMM_WORLD_RANK"]), socket.gethostname(), x)


def test_mpirun_on_two_nodes_through_qsub(cluster, cluster_workdir):
    # the wrapper sets no PBS_NODEFILE: the script writes one from the Slurm allocation for mpirun's --hostfile
    ex = Executor(site=pbs_site(), folder=str(cluster_workdir / "jobs"), nodes=2, tasks_per_node=2,
                  launcher="mpirun")
    job = ex.submit(rank_and_host, "x")
    results = job.results(timeout=WAIT)
    assert [r[0] for r in results] == [0, 1, 2, 3] and {r[2] for r in results} == {"x"}
    hosts = [r[1] for r in results]
    assert hosts[0] == hosts[1] != hosts[2] == hosts[3], hosts
    nodefile = (Path(job.folder) / "log" / "nodefile.0").read_text().split()
    assert nodefile == [hosts[0], hosts[0], hosts[2], hosts[2]]


def test_a_job_of_several_tasks_runs_on_every_rank_with_mpirun_by_default(cluster, cluster_workdir):
    # issue 7: on PBS, mpirun is the launcher of a job of several tasks when none is chosen
    ex = Executor(site=pbs_site(), folder=str(cluster_workdir / "jobs"), nodes=3, tasks_per_node=2)
    job = ex.submit(rank_and_host, "y")
    results = job.results(timeout=WAIT)
    assert [r[0] for r in results] == [0, 1, 2, 3, 4, 5] and {r[2] for r in results} == {"y"}
    hosts = [r[1] for r in results]
    assert hosts[0] == hosts[1] and hosts[2] == hosts[3] and hosts[4] == hosts[5], hosts
    assert len(set(hosts)) == 3, hosts
    assert " -- mpirun -np 6 --map-by ppr:2:node --hostfile " in job.script


def write_later(path, seconds):
    time.sleep(seconds)
    Path(path).write_text("written by the first job")
    return time.time()


def read_now(path):
    return Path(path).read_text(), time.time()


def test_a_job_after_another_starts_only_once_that_one_completed(ex, cluster, cluster_workdir):
    marker = cluster_workdir / "first.txt"
    first = ex.submit(write_later, str(marker), 5)
    second = ex.with_resources(after=[first]).submit(read_now, str(marker))
    assert f"#PBS -W depend=afterok:{first.job_id}\n#SBATCH --kill-on-invalid-dep=yes\n" in second.script
    # while the first runs, the second waits for it (the wrapper's qsub handed the dependency to Slurm)
    deadline = time.time() + WAIT
    while qstat_state(cluster, first.job_id) != "R":
        assert time.time() < deadline, f"job {first.job_id} did not start"
        time.sleep(0.5)
    reason = cluster.run(["squeue", "--noheader", "--format=%T|%r", "--jobs", second.job_id], timeout=60).stdout
    assert reason.strip() == "PENDING|Dependency", reason
    text, read_at = second.result(timeout=WAIT)
    assert text == "written by the first job"  # it ran after the file was written
    assert read_at >= first.result(timeout=WAIT)


def test_a_job_after_a_failed_one_is_removed_from_the_queue(ex, cluster):
    failing = ex.submit(fail, "first step broke")
    dependent = ex.with_resources(after=[failing]).submit(talk, 1)
    with pytest.raises(ValueError, match="^first step broke$"):
        failing.result(timeout=WAIT)
    # the wrapper's qstat says only "C" with no exit status: the error names the likely reason
    with pytest.raises(JobLostError, match=rf"^job {dependent.job_id} ended \(C \(exit status not reported\)\) "
                                           rf"without writing a result; .*; it was to start after {failing.job_id}: "
                                           "if one of those failed, it never ran$"):
        dependent.result(timeout=WAIT)
    assert qstat_state(cluster, dependent.job_id) == "C"
    # Slurm cancelled it (#SBATCH --kill-on-invalid-dep=yes) instead of keeping it pending for ever
    out = cluster.run(["squeue", "--noheader", "--states=all", "--format=%T|%r", "--jobs", dependent.job_id],
                      timeout=60).stdout
    assert out.strip() == "CANCELLED|DependencyNeverSatisfied", out
    assert dependent.stdout() == ""  # it never ran
