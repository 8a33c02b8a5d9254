"""Bad input on the live cluster (site "testcluster"): each gets its exact error, and nothing is submitted (nothing
new in squeue, no job folder, nothing in the registry).

- ``attach()``, ``hpcbridge result`` and ``hpcbridge logs`` with an array task or a bundled call the job does not
  have, or an array's own id where one task is needed;
- ``hpcbridge submit`` targets that cannot run: not callable, a syntax error, unreadable, not UTF-8, a module that
  raises when imported;
- ``after=`` a job id the scheduler does not know (Slurm would take it for a job long done and start at once).

Run as alice (see docs/testcluster.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from hpcbridge import attach
from hpcbridge.errors import JobNotFoundError, ResourceError, UsageError

REPO = Path(__file__).resolve().parents[2]


def double(x):
    return 2 * x


def _cli(*args: str, cwd: Path, rc: Optional[int] = 0, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``hpcbridge ARGS`` as a user runs it (this test's registry: $HPCBRIDGE_HOME is inherited)."""
    env = {k: v for k, v in os.environ.items() if k != "HPCBRIDGE_SITE"}
    env["PYTHONPATH"] = str(REPO)
    p = subprocess.run([sys.executable, "-m", "hpcbridge.cli", *args], capture_output=True, text=True,
                       cwd=str(cwd), env=env, timeout=timeout)
    if rc is not None:
        assert p.returncode == rc, f"hpcbridge {list(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def _folders(path: Path) -> List[str]:
    return sorted(os.listdir(path)) if path.is_dir() else []


# -- attach / result / logs: a task or a position the job does not have ------------------------------------------
def test_attach_result_and_logs_refuse_a_task_or_position_the_job_does_not_have(ex, cluster, cluster_workdir):
    jobs = ex.map_jobs(double, [1, 2, 3, 4], chunksize=2)  # one array of 2 tasks, 2 calls in each
    assert jobs.results(timeout=300) == [2, 4, 6, 8]
    array = jobs[0].job_id.split("_")[0]
    assert [(j.job_id, j.position) for j in jobs] == [(f"{array}_0", 0), (f"{array}_0", 1), (f"{array}_1", 0),
                                                      (f"{array}_1", 1)]
    before = cluster.squeue_ids()
    folders = _folders(cluster_workdir / "jobs")

    assert attach(f"{array}_1", site="testcluster", position=1).result(timeout=120) == 8  # the last call: fine
    with pytest.raises(UsageError) as info:
        attach(f"{array}_1", site="testcluster", position=2)
    assert str(info.value) == f"job {array}_1 holds 2 bundled call(s); position=2 is not one"
    with pytest.raises(JobNotFoundError) as missing:
        attach(f"{array}_2", site="testcluster")  # one task past the array's end
    assert str(missing.value).startswith(f"no job {array}_2 of site 'testcluster' in the registry ")
    with pytest.raises(UsageError) as whole:
        attach(array, site="testcluster")
    assert str(whole.value) == f"job {array} is an array of 2 task(s); attach one of them: {array}_0, {array}_1"

    assert _cli("result", f"{array}_1", "--position", "1", cwd=cluster_workdir).stdout == "8\n"
    for args, rc, lines in [
        (["result", f"{array}_1", "--position", "2"], 2,
         [f"hpcbridge: error: job {array}_1 holds 2 bundled call(s); --position 2 is not one",
          "hint: --position 0 .. 1"]),
        (["result", f"{array}_1", "--position", "-1"], 2,
         [f"hpcbridge: error: job {array}_1 holds 2 bundled call(s); --position -1 is not one",
          "hint: --position 0 .. 1"]),
        (["result", f"{array}_2"], 4,
         [f"hpcbridge: error: no job {array}_2 in this machine's registry",
          "hint: `hpcbridge status` lists the jobs submitted from here"]),
        (["logs", f"{array}_2"], 4,
         [f"hpcbridge: error: no job {array}_2 in this machine's registry",
          "hint: `hpcbridge status` lists the jobs submitted from here"]),
        (["logs", array], 2,
         [f"hpcbridge: error: job {array} is an array of 2 tasks", f"hint: give one task, e.g. {array}_0"]),
        (["result", array], 2,
         [f"hpcbridge: error: job {array} is an array of 2 tasks", f"hint: give one task, e.g. {array}_0"]),
    ]:
        p = _cli(*args, cwd=cluster_workdir, rc=rc)
        assert p.stderr.splitlines() == lines and p.stdout == "", (args, p.stderr)
    assert cluster.squeue_ids() - before == set()
    assert _folders(cluster_workdir / "jobs") == folders  # the map's one folder, nothing new
    assert len(json.loads(_cli("status", "--json", cwd=cluster_workdir).stdout)) == 4  # the map's 4 calls only


# -- submit targets that cannot run ---------------------------------------------------------------------------------
TARGETS: Dict[str, Any] = {
    # name: (files to write {name: bytes, or (bytes, mode)}, argv after `submit --site testcluster`, stderr lines)
    "not callable": (
        {"jobs_mod.py": b"LIMIT = 3\n\ndef double(x):\n    return 2 * x\n"}, ["jobs_mod:LIMIT", "1"],
        ["hpcbridge: error: jobs_mod:LIMIT is not callable: it is an int (3)",
         "hint: give a function; callables there: double"]),
    "syntax error in a file": (
        {"train.py": b"import sys\ndef main(:\n    pass\n"}, ["train.py"],
        ["hpcbridge: error: train.py:2: invalid syntax", "hint: the file must be valid Python"]),
    "syntax error in a module": (
        {"broken_mod.py": b"def f(x):\n    return x +\n"}, ["broken_mod:f", "1"],
        ["hpcbridge: error: cannot import 'broken_mod': {dir}/broken_mod.py:2: invalid syntax",
         "hint: the module must be valid Python"]),
    "unreadable file": (
        {"train.py": (b"print('hi')\n", 0o000)}, ["train.py"],
        ["hpcbridge: error: cannot read train.py: Permission denied",
         "hint: give the path of a Python file you can read"]),
    "unreadable module": (
        {"secret_mod.py": (b"def f(x):\n    return x\n", 0o000)}, ["secret_mod:f", "1"],
        ["hpcbridge: error: cannot import 'secret_mod': cannot read {dir}/secret_mod.py: Permission denied",
         "hint: make the module readable (chmod u+r)"]),
    "missing file": (
        {}, ["trian.py"],
        ["hpcbridge: error: cannot read trian.py: No such file or directory",
         "hint: give the path of a Python file you can read"]),
    "not UTF-8": (
        {"latin.py": b"print('caf\xe9')\n"}, ["latin.py"],
        ["hpcbridge: error: cannot read latin.py: invalid or missing encoding declaration",
         "hint: save it as UTF-8, or declare its encoding in a coding line (# -*- coding: latin-1 -*-)"]),
    "a module that raises on import": (
        {"config_mod.py": b"raise RuntimeError('no config here')\n\ndef f(x):\n    return x\n"}, ["config_mod:f"],
        ["hpcbridge: error: cannot import 'config_mod': it raised RuntimeError: no config here",
         "hint: fix the module's top-level code (--debug shows the traceback)"]),
}


@pytest.mark.parametrize("case", list(TARGETS))
def test_a_target_that_cannot_run_is_refused_before_anything_is_submitted(case, cluster, cluster_workdir):
    files, argv, expected = TARGETS[case]
    for name, data in files.items():
        data, mode = data if isinstance(data, tuple) else (data, 0o644)
        (cluster_workdir / name).write_bytes(data)
        os.chmod(cluster_workdir / name, mode)
    if any(isinstance(d, tuple) for d in files.values()) and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode (the live tests run as alice)")
    before = cluster.squeue_ids()
    workdir = Path.home() / ".hpcbridge" / "jobs"  # the testcluster site's job folders
    folders = _folders(workdir)
    p = _cli("submit", "--site", "testcluster", *argv, cwd=cluster_workdir, rc=2)
    assert p.stderr.splitlines() == [line.format(dir=cluster_workdir) for line in expected], p.stderr
    assert p.stdout == ""
    assert json.loads(_cli("status", "--json", cwd=cluster_workdir).stdout) == []
    assert cluster.squeue_ids() - before == set()
    assert _folders(workdir) == folders


# -- after= a job id the scheduler does not know --------------------------------------------------------------------
def test_after_a_job_id_the_scheduler_does_not_know_is_refused_and_nothing_is_submitted(ex, cluster, cluster_workdir):
    before = cluster.squeue_ids()
    with pytest.raises(ResourceError) as info:
        ex.with_resources(after="99999999").submit(double, 1)  # past Slurm's highest job id: never a job
    assert str(info.value) == ("after: the scheduler of site 'testcluster' does not know job 99999999: check the id "
                               "(a job that completed long ago and was forgotten needs no after=)")
    cluster.assert_nothing_left(before, cluster_workdir / "jobs")

    parents = ex.map_jobs(double, [1, 2])  # an array of 2 tasks
    array = parents[0].job_id.split("_")[0]
    refused = cluster.squeue_ids()
    with pytest.raises(ResourceError, match=rf"does not know job {array}_5: check the id"):
        ex.with_resources(after=f"{array}_5").submit(double, 1)  # a task the array does not have
    with pytest.raises(ResourceError, match=rf"does not know jobs 99999999, {array}_2: check the id"):
        ex.with_resources(after=[array, "99999999", f"{array}_2"]).submit(double, 1)
    assert cluster.squeue_ids() - refused == set()
    assert len(_folders(cluster_workdir / "jobs")) == 1  # the parents' only

    child = ex.with_resources(after=array).submit(double, 21)  # the array's id, as a string: known, so it waits
    assert child.result(timeout=300) == 42 and parents.results(timeout=60) == [2, 4]
    deadline = time.monotonic() + 60  # the result is written before the job's last step ends: wait for its end
    while True:
        out = cluster.run(["squeue", "--noheader", "--array", "--states=all", "-j", f"{array},{child.job_id}", "-o",
                           "%i|%T|%S|%e"], timeout=30).stdout  # slurmctld keeps ended jobs MinJobAge (300 s)
        rows = {job_id: (state, start, end) for job_id, state, start, end in (x.split("|") for x in out.splitlines())}
        ending = {"RUNNING", "COMPLETING"} & {state for state, _, _ in rows.values()}
        if not ending or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {state for state, _, _ in rows.values()} == {"COMPLETED"} and len(rows) == 3, rows
    assert rows[child.job_id][1] >= max(rows[j.job_id][2] for j in parents), rows  # ISO times: it waited
