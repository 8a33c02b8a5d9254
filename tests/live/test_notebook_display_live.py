"""A notebook kernel that itself runs inside a Slurm allocation (as a batchspawner server's does), on a compute
node: the kernel is started by nbclient under ``srun`` as alice, and its cells use hpcbridge as a user would.

What it shows, read from the executed notebook's outputs: the "inside an allocation" line (in ``here()`` and in the
live display), the walltime warning exactly once for two jobs longer than what is left of the allocation, and a
job held back by ``--begin`` shown with its queue reason and estimated start, then updated in place (the same
output) to its final state, with no scheduler query beyond the poller's own: the executor's transport is the
site's own wrapped in a counter, so every command it runs is counted.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat

if TYPE_CHECKING:
    from conftest import LiveCluster  # tests/live/conftest.py

REPO = Path(__file__).resolve().parents[2]
ALLOCATION_S = 240  # the notebook's own allocation: 4 minutes, shorter than the jobs' 10

SETUP = """\
import datetime, json, os, time
from hpcbridge import Executor
from hpcbridge.here import here
from hpcbridge.live import watch
from hpcbridge.sites import load_site
from hpcbridge.transport import make_transport

class Counting:
    \"\"\"The site's own transport, counting the commands it runs by program (a measurement, not a stand-in).\"\"\"
    def __init__(self, inner):
        self.inner, self.programs = inner, []
    def run(self, argv, **kw):
        self.programs.append(argv[0])
        return self.inner.run(argv, **kw)
    def __getattr__(self, name):
        return getattr(self.inner, name)

site = load_site("testcluster")
t, t2 = Counting(make_transport(site)), Counting(make_transport(site))
ex = Executor(site=site, transport=t, folder=FOLDER, walltime="00:10:00")
ex2 = Executor(site=site, transport=t2, folder=FOLDER, walltime="00:10:00")

def square(x):
    print(f"squaring {x}")
    return x * x
"""

HERE = "print(os.environ['SLURM_JOB_ID'], here())"

SUBMIT = """\
submitted = datetime.datetime.now().isoformat(timespec="seconds")
job = ex.with_resources(extra_directives=["--begin=now+25"]).submit(square, 7)
other = ex2.submit(square, 8)
d = watch(job)
"""

WAITING = """\
deadline = time.monotonic() + 60
while not job.start_estimate and time.monotonic() < deadline:
    time.sleep(0.2)
print(json.dumps({"state": job.state.value, "reason": job.queue_reason, "start": job.start_estimate,
                  "submitted": submitted}))
"""

RESULT = "print(job.result(timeout=150), other.result(timeout=150), d.wait(timeout=30))"

TAIL = "print(d.tail())"

COUNTS = """\
print(json.dumps({"job_id": job.job_id, "other_id": other.job_id, "drawn": d.drawn, "updates": d.updates,
                  "status_commands": sum(p in ("squeue", "sacct", "scontrol") for p in t.programs),
                  "poller_queries": d.poller_queries()}))
"""

RUNNER = """\
import sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=200, kernel_name="python3", allow_errors=True,
               resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(nb, sys.argv[2])
"""


def _stdout(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_a_kernel_inside_an_allocation_says_so_warns_once_and_shows_a_waiting_job_updated_in_place(
    cluster: LiveCluster, cluster_workdir: Path
) -> None:
    folder = cluster_workdir / "jobs"
    sources = [f"FOLDER = {str(folder)!r}\n" + SETUP, HERE, SUBMIT, WAITING, RESULT, TAIL, COUNTS]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb_in, nb_out, runner = (cluster_workdir / n for n in ("in.ipynb", "out.ipynb", "runner.py"))
    nbformat.write(nb, str(nb_in))
    runner.write_text(RUNNER)

    started = time.monotonic()
    p = cluster.run(
        ["srun", "--partition=debug", f"--time=00:0{ALLOCATION_S // 60}:00", "--cpus-per-task=1", "--mem=1G",
         "--job-name=nb-kernel", sys.executable, str(runner), str(nb_in), str(nb_out), str(cluster_workdir)],
        timeout=ALLOCATION_S + 30, cwd=cluster_workdir,
        env={"HPCBRIDGE_SITE": "testcluster", "PYTHONPATH": str(REPO), "HPCBRIDGE_PROGRESS": "0"},
    )
    took = time.monotonic() - started
    cells = nbformat.read(str(nb_out), as_version=4).cells
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, (errors, p.stdout, p.stderr)

    # inside an allocation: the kernel's own Slurm job, on a compute node, with its time left
    kernel_job, line = _stdout(cells[1]).strip().split(" ", 1)
    m = re.fullmatch(rf"inside Slurm job {kernel_job} on (node[123]), 0:0([0-4]):(\d\d) left", line)
    assert m, line
    assert 60 < int(m.group(2)) * 60 + int(m.group(3)) <= ALLOCATION_S

    # the walltime warning: exactly once in the whole notebook, for the first of the two 10-minute jobs
    counts = json.loads(_stdout(cells[6]))
    job_id, other_id = counts["job_id"], counts["other_id"]
    warned = [line for c in cells for o in c.outputs if o.output_type == "stream" and o.name == "stderr"
              for line in o.text.splitlines() if "WalltimeWarning" in line]
    assert len(warned) == 1, warned
    assert re.search(
        rf"WalltimeWarning: job {job_id} asks for walltime 0:10:00, longer than what is left of this notebook's own "
        rf"allocation \(Slurm job {kernel_job}: 0:0[0-4]:\d\d left\): it may still run when this kernel ends\.",
        warned[0],
    ), warned[0]
    assert other_id != job_id

    # the waiting job: its reason and the estimated start (the --begin time), from the poller's own query
    waiting = json.loads(_stdout(cells[3]))
    assert (waiting["state"], waiting["reason"]) == ("PENDING", "BeginTime"), waiting
    wait_s = (datetime.datetime.fromisoformat(waiting["start"])
              - datetime.datetime.fromisoformat(waiting["submitted"])).total_seconds()
    assert 20 <= wait_s <= 35, waiting

    # the display: one output (updated in place) that ends in the final state; on the way it showed the reason
    displays = [o for o in cells[2].outputs if o.output_type == "display_data"]
    assert len(displays) == 1, cells[2].outputs
    final = displays[0].data["text/plain"].splitlines()
    assert final[0] == "job on testcluster"
    assert re.fullmatch(rf"this kernel runs inside Slurm job {kernel_job} on node[123], 0:0[0-4]:\d\d left", final[1])
    assert re.fullmatch(rf"{job_id} COMPLETED on node[123] \d+\.\ds", final[2]), final
    assert 'class="hpcbridge-live"' in displays[0].data["text/html"]
    assert f"this kernel runs inside Slurm job {kernel_job}" in displays[0].data["text/html"]
    drawn = [d.splitlines()[2] for d in counts["drawn"]]
    assert f"{job_id} PENDING (BeginTime, est. start {waiting['start']})" in drawn, drawn
    assert re.fullmatch(rf"{job_id} COMPLETED on node[123]", drawn[-1]), drawn

    # no query of its own: every status command the executor's transport ran is one of the poller's queries,
    # while the display was redrawn more often than that
    assert counts["status_commands"] == counts["poller_queries"] >= 2, counts
    assert counts["updates"] > counts["poller_queries"], counts

    # the results, the stdout tail on demand, and nothing left running
    assert _stdout(cells[4]).split() == ["49", "64", "True"]
    assert _stdout(cells[5]).strip() == "squaring 7"
    for jid in (job_id, other_id, kernel_job):
        assert cluster.wait_job(jid, timeout=60).state == "COMPLETED"
    print(f"notebook inside an allocation: {took:.0f} s")  # noqa: T201 - the run time, for the report
