"""attach and find_job: a job of this machine's registry, or JobNotFoundError (exit code 4 in the CLI)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hpcbridge.attaching import attach, find_job
from hpcbridge.errors import HpcBridgeError, JobNotFoundError
from hpcbridge.registry import Registry


def _record(job_id, task_ids, chunks=None, site="local"):
    Registry().record(tag=f"tag{job_id}", site=site, job_id=job_id, folder=f"/nowhere/tag{job_id}",
                      is_array=len(task_ids) > 1, chunks=chunks or [1] * len(task_ids), ranks=1, function="m.f",
                      submit_time=1.0, task_ids=task_ids)


def test_find_job_raises_job_not_found_naming_the_site_it_looked_on():
    with pytest.raises(JobNotFoundError, match=r"^no job 7 in this machine's registry$"):
        find_job("7")
    with pytest.raises(JobNotFoundError, match=r"^no job 7 of site 'hpc' in this machine's registry$"):
        find_job("7", "hpc")


def test_find_job_returns_a_task_or_every_task_of_an_array_id():
    _record("12", ["12_0", "12_1"])
    assert sorted(r["job_id"] for r in find_job("12")) == ["12_0", "12_1"]
    assert [r["job_id"] for r in find_job("12_1", "local")] == ["12_1"]
    with pytest.raises(JobNotFoundError):
        find_job("12", "other")


def test_attach_to_an_unknown_job_raises_job_not_found_and_says_where_it_looked():
    with pytest.raises(JobNotFoundError, match=r"^no job 999999 of site 'local' in the registry \S+registry\.sqlite; "
                                               r"attach works for jobs submitted by hpcbridge from this machine"):
        attach("999999", site="local")


def test_attach_to_an_array_id_or_a_missing_position_is_not_a_missing_job():
    _record("12", [f"12_{i}" for i in range(5)])
    with pytest.raises(HpcBridgeError, match=r"^job 12 is an array of 5 task\(s\); attach one of them: "
                                             r"12_0, 12_1, 12_2 \.\.\. 12_4$") as info:
        attach("12", site="local")
    assert not isinstance(info.value, JobNotFoundError)
    _record("13", ["13"], chunks=[2])
    with pytest.raises(HpcBridgeError, match=r"^job 13 holds 2 bundled call\(s\); position=5 is not one$"):
        attach("13", site="local", position=5)


def test_hpcbridge_attach_stays_the_function_once_the_modules_using_it_are_imported():
    """A submodule named ``attach`` would replace the function as ``hpcbridge.attach`` once imported."""
    code = ("import hpcbridge.cli, hpcbridge.executor, hpcbridge.attaching, hpcbridge\n"
            "from hpcbridge import attach\n"
            "print(callable(attach), attach is hpcbridge.attach is hpcbridge.executor.attach)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_an_array_id_or_a_missing_position_is_a_usage_error_exit_2_in_the_cli():
    from hpcbridge.cli import explain
    from hpcbridge.errors import UsageError

    _record("14", ["14_0", "14_1"], chunks=[2, 2])
    for kwargs in ({"job_id": "14"}, {"job_id": "14_1", "position": 2}, {"job_id": "14_1", "position": -1}):
        with pytest.raises(UsageError) as info:
            attach(site="local", **kwargs)
        assert explain(info.value, argparse.Namespace())[2] == 2  # bad input, as docs/cli.md says
    with pytest.raises(JobNotFoundError):
        attach("14_2", site="local")  # a task past the array's end: no such job (exit 4)
