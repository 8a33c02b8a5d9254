"""hpcbridge.testing as a user would use it: a unit test of code that submits jobs, with nothing leaving the process
(no cluster: this proves the test double, not the features; the live tests prove those)."""

from __future__ import annotations

import pytest

from hpcbridge import Executor
from hpcbridge.sites import site_from_mapping
from hpcbridge.submit_once import submit_once_argv
from hpcbridge.testing import ScriptedTransport, this_python


def _site():
    return site_from_mapping("mine", {"scheduler": "slurm", "workdir": "/scratch/me/jobs", "python": "/usr/bin/python3",
                                      "poll_interval_min_s": 0.1})


def _transport():
    return ScriptedTransport(answers={"/usr/bin/python3": this_python(), "sbatch": (0, "4242\n", ""),
                                      "sacct": (0, "", "")})


def test_a_users_code_that_submits_is_unit_tested_without_a_cluster():
    t = _transport()
    ex = Executor(site=_site(), transport=t, walltime="00:05:00")
    job = ex.submit(pow, 2, 10)
    assert job.job_id == "4242"
    assert "#SBATCH --time=00:05:00" in t.script_of(job)
    marker = f"{job.folder}/submitted"
    assert [c for c in t.calls if c[0] == "/bin/sh"] == [submit_once_argv(marker, ["sbatch", "--parsable",
                                                                                   f"{job.folder}/script.sh"])]
    assert t.files[f"{marker}.rc"] == b"0\n"  # recorded as the real wrapper records it
    t.complete(job, 1024)
    assert job.result(timeout=30) == 1024


def test_a_failure_comes_back_as_the_callables_own_exception():
    t = _transport()
    jobs = Executor(site=_site(), transport=t).map_jobs(abs, [-1, -2])
    t.complete(jobs[0], 1)
    t.fail(jobs[1], KeyError("missing"))
    assert jobs[0].result(timeout=30) == 1
    with pytest.raises(KeyError, match="missing"):
        jobs[1].result(timeout=30)


def test_a_used_marker_is_refused_as_the_real_wrapper_refuses_it():
    t = ScriptedTransport(answers={"sbatch": (0, "1\n", "")}, files={"/w/t/submitted": b""})
    out = t.run(submit_once_argv("/w/t/submitted", ["sbatch", "x.sh"]))
    assert out.returncode == 86
    assert out.stderr == "hpcbridge: /w/t/submitted exists: this submission was started before\n"


def test_a_command_nobody_scripted_fails_the_test_by_name():
    with pytest.raises(AssertionError, match=r"no scripted answer for \['scancel', '5'\]"):
        ScriptedTransport().run(["scancel", "5"])
