"""The PBS adapter (flavour torque) over the SSH transport, from the user's "laptop" (the client namespace).

Site "testcluster-pbs-ssh" (site-configs/testcluster-pbs-ssh.toml): Debian's slurm-wlm-torque qsub/qstat/qdel on
the login node ``testcluster-login``, driven over SSH. The laptop reaches only the login node's sshd: no
slurmctld, no shared /home or /scratch. As in test_ssh_live.py, each test runs a small Python program there
(``python -c``) through ``tests/cluster/client`` with the working tree on PYTHONPATH (the jobs get it too, through
the site's env), and asserts on what it reports and on what the cluster shows (qstat, squeue, as the same user,
from the cluster side).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import LiveCluster


REPO = Path(__file__).resolve().parents[2]
WAIT = 240  # per job: the cluster is shared, jobs may queue behind others'

PRELUDE = r'''
import json, logging, os, socket, subprocess, sys, time
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
from hpcbridge import Executor, JobState, attach, errors
from hpcbridge.sites import load_site

def site(**kw):
    return load_site("testcluster-pbs-ssh", env={"PYTHONPATH": "__REPO__"}, **kw)

def talk(x):
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x * x
'''


def laptop(cluster: LiveCluster, code: str, timeout: float = 400) -> dict[str, Any]:
    """Run ``code`` (after PRELUDE) with python on alice's laptop; its RESULT line, parsed."""
    return cluster.laptop_python(PRELUDE.replace("__REPO__", str(REPO)) + code, timeout=timeout)


def qstat_state(cluster: LiveCluster, job_id: str) -> str | None:
    out = cluster.run(["qstat", "-f", job_id], check=False, timeout=60).stdout
    m = re.search(r"job_state = (\S)", out)
    return m.group(1) if m else None


def test_submit_exception_and_cancel_over_ssh(cluster: LiveCluster) -> None:
    r = laptop(cluster, r'''
# the laptop cannot reach slurmctld nor see the cluster's shared folders
reach = error(lambda: socket.create_connection(("10.77.0.1", 6817), timeout=3))
ex = Executor(site=site(), walltime="00:05:00")
t0 = time.monotonic()
job = ex.submit(talk, 7)
value = job.result(timeout=WAIT)
seconds = time.monotonic() - t0

def boom(x):
    raise ValueError(f"boom {x}")

failing = ex.submit(boom, 7)
try:
    failing.result(timeout=WAIT)
    raised = None
except ValueError as exc:
    raised = [str(exc), str(exc.__cause__)]
slow = ex.submit(time.sleep, 600)
deadline = time.time() + WAIT
while slow.state != JobState.RUNNING and time.time() < deadline:
    time.sleep(0.5)
running = slow.state.value
cancelled = slow.cancel()
report(reach=reach, scratch=os.path.exists("/scratch/alice"), value=value,
       seconds=seconds, job_id=job.job_id, state=job.state.value, out=job.stdout(), err=job.stderr(),
       script=job.script, folder=job.folder, raised=raised, failing_id=failing.job_id,
       failing_state=failing.state.value, running=running, cancelled=cancelled, slow_id=slow.job_id,
       slow_state=slow.state.value, stats=vars(ex._backend.transport.stats))
'''.replace("WAIT", str(WAIT)))
    assert r["reach"] is not None and r["reach"][0] == "OSError"  # no route to slurmctld from the laptop
    assert r["scratch"] is False
    assert r["value"] == 49 and r["state"] == "COMPLETED"
    assert re.fullmatch(r"\d+", r["job_id"]), r["job_id"]  # the wrapper's qsub id, read over SSH
    assert r["out"] == "out 7\n" and r["err"] == "err 7\n"  # logs read back over SSH
    assert "#PBS -l nodes=1:ppn=1\n" in r["script"] and "#PBS -l walltime=00:05:00\n" in r["script"]
    # the job folder is on the cluster (under the cluster home), with the scheduler's own output file in it
    assert r["folder"].startswith("/home/alice/.hpcbridge/jobs/")
    assert (Path(r["folder"]) / "log" / "pbs.out").exists()
    # qsub ran in the login shell's home: the -o on its command line kept <name>.o<id> out of it
    assert not list(Path("/home/alice").glob(f"*.o{r['job_id']}"))
    assert r["raised"][0] == "boom 7" and r["failing_state"] == "FAILED"
    remote = r["raised"][1]
    assert remote.startswith(f"Remote traceback (job {r['failing_id']}, host node"), remote
    assert ", in boom\nValueError: boom 7\n" in remote, remote
    assert r["running"] == "RUNNING"
    assert r["cancelled"] is True and r["slow_state"] == "CANCELLED"
    # from the cluster side: the finished jobs are C in qstat, the cancelled one C and gone from squeue
    assert qstat_state(cluster, r["job_id"]) == "C"
    assert cluster.wait_job(r["failing_id"], timeout=120).state == "FAILED"
    assert cluster.wait_job(r["slow_id"], timeout=120).state == "CANCELLED"
    assert qstat_state(cluster, r["slow_id"]) == "C"
    squeue = cluster.run(["squeue", "--noheader", "--jobs", r["slow_id"]], check=False, timeout=60).stdout
    assert squeue.strip() == "", squeue
    assert r["stats"]["connects"] == 1 and r["stats"]["reconnects"] == 0  # one connection for everything
    print(f"submit -> result over SSH on PBS: {r['seconds']:.1f} s")


def test_bundled_array_map_over_ssh(cluster: LiveCluster) -> None:
    r = laptop(cluster, r'''
ex = Executor(site=site(), walltime="00:05:00")
jobs = ex.map_jobs(talk, range(6), chunksize=2)  # 3 array tasks of 2 calls
values = [j.result(timeout=WAIT) for j in jobs]
squares = list(ex.map(talk, range(4), timeout=WAIT))  # map itself: one array, results in order
report(ids=[j.job_id for j in jobs], values=values, squares=squares, out=jobs[5].stdout(),
       states=[j.state.value for j in jobs])
'''.replace("WAIT", str(WAIT)))
    base = r["ids"][0].split("[")[0]
    assert base.isdigit(), r["ids"]
    assert r["ids"] == [f"{base}[{t}]" for t in (0, 0, 1, 1, 2, 2)]
    assert r["values"] == [0, 1, 4, 9, 16, 25]
    assert r["squares"] == [0, 1, 4, 9]
    assert r["out"] == "out 4\nout 5\n"  # both calls of task 2, in one task's log
    assert r["states"] == ["COMPLETED"] * 6
    # every task has ended, from Slurm's side: the array's tasks and their states, exactly
    want = {f"{base}_{t}": "COMPLETED" for t in range(3)}
    deadline = time.time() + 60
    while True:
        out = cluster.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", "--jobs", base],
                          check=False, timeout=60).stdout
        states = dict(line.split("|", 1) for line in out.split())
        if states == want or time.time() > deadline:  # a task may be COMPLETING for a moment after its result
            break
        time.sleep(1)
    assert states == want, out


def test_attach_from_a_new_process_over_ssh(cluster: LiveCluster) -> None:
    first = laptop(cluster, r'''
ex = Executor(site=site(), walltime="00:05:00")
jobs = ex.map_jobs(str.upper, ["first", "attached over ssh"])
plain = ex.submit(str.upper, "plain job")
report(task=jobs[1].job_id, plain=plain.job_id)
''')
    assert re.fullmatch(r"\d+\[1\]", first["task"]), first["task"]
    second = laptop(cluster, r'''
task = attach(TASK, site=site())
plain = attach(PLAIN, site=site())
report(task=[task.result(timeout=WAIT), task.state.value], plain=[plain.result(timeout=WAIT), plain.state.value])
'''.replace("TASK", repr(first["task"])).replace("PLAIN", repr(first["plain"])).replace("WAIT", str(WAIT)))
    assert second["task"] == ["ATTACHED OVER SSH", "COMPLETED"]
    assert second["plain"] == ["PLAIN JOB", "COMPLETED"]
