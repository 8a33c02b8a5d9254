"""Status-query decisions of the backend, with a transport that replays recorded Slurm output (pure logic)."""

import pytest

from hpcbridge.backend import Backend
from hpcbridge.sites import site_from_mapping
from hpcbridge.state import JobState
from hpcbridge.testing import ScriptedTransport


def backend(answers=None, steps=(), accounting=True):
    """A Slurm site's backend whose commands get the recorded ``answers`` (by program) or ``steps`` (in order)."""
    site = site_from_mapping("rec", {"scheduler": "slurm", "workdir": "/w", "accounting": accounting})
    return Backend(site, transport=ScriptedTransport(steps, answers=answers))


def test_accounting_found_disabled_switches_to_squeue():
    b = backend({
        "sacct": (1, "", "sacct: error: Slurm accounting storage is disabled\n"),
        "squeue": (0, "12|RUNNING|None|node1\n", ""),
    })
    st = b.query_status(["12"], 0)
    assert st["12"].state == JobState.RUNNING
    assert [c[0] for c in b.transport.calls] == ["sacct", "squeue"]
    assert b.facts.accounting is False
    b.query_status(["12"], 0)
    assert [c[0] for c in b.transport.calls] == ["sacct", "squeue", "squeue"]  # decided once


def test_a_failed_query_is_reported_as_unknown_not_as_failed_jobs():
    b = backend({"sacct": (1, "", "sacct: error: Problem talking to the database: Connection refused\n")})
    assert b.query_status(["12"], 0) is None
    assert b.facts.accounting is True


def test_a_submission_the_controller_never_received_is_tried_again(monkeypatch):
    import hpcbridge.submit_once as submit_once

    monkeypatch.setattr(submit_once, "SUBMIT_RETRY_WAITS_S", (0.0, 0.0))
    b = backend(steps=[
        (1, "", "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n"),
        (0, "77\n", ""),
    ])
    assert b.run_checked(["sbatch", "--parsable", "x.sh"], "submit the job").stdout == "77\n"


def test_an_ambiguous_submission_failure_is_not_retried(monkeypatch):
    import pytest

    from hpcbridge.errors import SchedulerError

    b = backend({"sbatch": (1, "", "sbatch: error: Batch job submission failed: Socket timed out on send/recv\n")})
    with pytest.raises(SchedulerError, match="Socket timed out"):
        b.run_checked(["sbatch", "--parsable", "x.sh"], "submit the job")
    assert len(b.transport.calls) == 1


# -- the cluster-side python check: once per site and process -------------------------------------------------


def _env_answer(python=None, cloudpickle_version=None, hpcbridge_version="0.1.0", executable="/opt/py/bin/python3"):
    import json
    import sys

    import cloudpickle

    info = {
        "python": python or ".".join(str(v) for v in sys.version_info[:3]),
        "executable": executable,
        "cloudpickle": cloudpickle_version if cloudpickle_version is not None else cloudpickle.__version__,
        "hpcbridge": hpcbridge_version,
    }
    return (0, json.dumps(info) + "\n", "")


@pytest.fixture
def fresh_env_checks(monkeypatch):
    """No verdicts from other tests of this process."""
    import hpcbridge.remote_env as remote_env

    monkeypatch.setattr(remote_env, "_ENV_PASSED", set())


def env_backend(answer, name="rec", python="/opt/py/bin/python3", ssh=None):
    data = {"scheduler": "slurm", "workdir": "/w", "python": python}
    if ssh is not None:
        data.update(transport="ssh", ssh=ssh)
    # over ssh too without connecting: only the site (the key of the verdict) and the replayed transport matter
    return Backend(site_from_mapping(name, data), transport=ScriptedTransport(answers={python: answer}))


def test_a_second_executor_for_the_same_site_does_not_check_again(fresh_env_checks):
    first = env_backend(_env_answer())
    first.check_remote_env()
    second = env_backend(_env_answer())
    second.check_remote_env()
    second.check_remote_env()
    assert [c[0] for c in first.transport.calls] == ["/opt/py/bin/python3"]
    assert second.transport.calls == []  # the verdict is the process's, not the executor's


def test_another_python_target_or_site_is_checked_on_its_own(fresh_env_checks):
    env_backend(_env_answer()).check_remote_env()
    other_python = env_backend(_env_answer(), python="/opt/other/bin/python3")
    other_python.check_remote_env()
    other_site = env_backend(_env_answer(), name="rec2")
    other_site.check_remote_env()
    over_ssh = env_backend(_env_answer(), ssh={"host": "login1"})
    over_ssh.check_remote_env()
    other_host = env_backend(_env_answer(), ssh={"host": "login2"})
    other_host.check_remote_env()
    for b in (other_python, other_site, over_ssh, other_host):
        assert len(b.transport.calls) == 1


def test_a_failed_check_is_not_remembered_so_a_fixed_site_passes(fresh_env_checks):
    from hpcbridge.errors import RemoteEnvironmentError

    broken = env_backend(_env_answer(hpcbridge_version=None))
    for _ in range(2):  # each submission checks again while the site is broken
        with pytest.raises(RemoteEnvironmentError, match="hpcbridge is not installed there"):
            broken.check_remote_env()
    assert len(broken.transport.calls) == 2
    fixed = env_backend(_env_answer())  # someone installed hpcbridge there
    fixed.check_remote_env()
    again = env_backend(_env_answer(hpcbridge_version=None))
    again.check_remote_env()  # passed once: not asked again in this process
    assert (len(fixed.transport.calls), len(again.transport.calls)) == (1, 0)


def test_a_python_of_another_minor_version_names_both_versions_and_the_fix(fresh_env_checks):
    """The Python major.minor branch, with a recorded answer: it cannot be made real on the live cluster, whose
    only CPython usable by the cluster users is Debian bookworm's /usr/bin/python3.11 (pyenv's other versions on
    this machine live under /root, out of their reach). The cloudpickle branch is live
    (test_core_faults_live.py::test_an_incompatible_cloudpickle_on_the_cluster)."""
    import sys

    import cloudpickle

    from hpcbridge import __version__
    from hpcbridge.errors import RemoteEnvironmentError

    minor = sys.version_info[1]
    b = env_backend(_env_answer(python=f"3.{minor - 1}.9", executable="/usr/bin/python3"), python="/usr/bin/python3")
    with pytest.raises(RemoteEnvironmentError) as info:
        b.check_remote_env()
    here = sys.version.split()[0]
    assert str(info.value) == (
        f"site 'rec': the cluster-side python /usr/bin/python3 cannot run these jobs: Python 3.{minor - 1}.9 there, "
        f"{here} here (major.minor must match). Fix: set `python = \"/path/to/python3.{minor}\"` in the site-config "
        f"of 'rec', a Python 3.{minor} with 'hpcbridge=={__version__}' 'cloudpickle=={cloudpickle.__version__}' "
        "installed"
    )


def test_without_accounting_a_job_scontrol_no_longer_knows_is_gone_not_pending_forever():
    b = backend({"scontrol": (1, "", "slurm_load_jobs error: Invalid job id specified\n")}, accounting=False)
    st = b.show_job("12")
    assert st.state == JobState.COMPLETED and st.native.startswith("gone from slurmctld")


def test_without_accounting_an_unreachable_controller_is_no_news():
    b = backend({"scontrol": (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n")},
                accounting=False)
    assert b.show_job("12") is None


def test_without_accounting_a_lost_connection_stops_the_per_task_looks_until_the_next_query():
    """squeue no longer lists the tasks, and the connection is down: one ``scontrol show job`` fails (each may take
    its 30 s timeout), the other tasks wait for the next query instead of 19 more failures in a row; nothing is
    marked failed."""
    from hpcbridge.errors import ConnectionLostError
    from hpcbridge.submission import Submission

    down = ConnectionLostError("the SSH connection to hpc dropped while trying to run scontrol")
    b = backend({"squeue": (0, "", ""), "scontrol": down}, accounting=False)
    sub = Submission(b, tag="t" * 16, folder="/w/tttttttttttttttt", script="", chunks=[1] * 5, is_array=True,
                     ranks=1, submit_time=1.0, job_id="40")
    b.poller._query([sub])
    assert [c[0] for c in b.transport.calls] == ["squeue", "scontrol"]
    assert [j.state for j in sub.all_jobs] == [JobState.PENDING] * 5 and not any(j.done() for j in sub.all_jobs)
