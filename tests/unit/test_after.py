"""Job dependencies (``after=``): which ids a job waits for, the directives each scheduler gets, checks before
anything is submitted, and the error a dependent of a failed job raises (pure; no cluster)."""

from __future__ import annotations

import pytest

from hpcbridge import Executor, errors
from hpcbridge.backend import Backend
from hpcbridge.job import mark_cancelled
from hpcbridge.schedulers.base import NativeStatus
from hpcbridge.sites import site_from_mapping
from hpcbridge.state import JobState
from hpcbridge.submission import Submission
from hpcbridge.testing import ScriptedTransport

TAG = "0123456789abcdef"
FOLDER = f"/scratch/alice/hpcb/{TAG}"


def _site(scheduler="slurm", **over):
    data = {"scheduler": scheduler, "python": "/opt/py/bin/python", "workdir": "/scratch/alice/hpcb",
            "defaults": {"walltime": "00:10:00"}}
    if scheduler == "pbs":
        data["flavour"] = "pbspro"
    data.update(over)
    name = f"after-{scheduler}-{data.get('flavour', '')}".rstrip("-")
    return site_from_mapping(name, data)


def _submitted(site, job_id, chunks=(1,), is_array=False):
    """A submission as the executor leaves it after qsub/sbatch (a scripted transport: nothing runs)."""
    return Submission(Backend(site, transport=ScriptedTransport()), tag=TAG, folder=FOLDER, script="",
                      chunks=list(chunks), is_array=is_array, ranks=1, submit_time=1.0, job_id=job_id)


def square(x):
    return x * x


# -- which ids ----------------------------------------------------------------------------------------------
def test_jobs_and_ids_become_the_ids_to_wait_for():
    site = _site()
    plain = _submitted(site, "101").jobs[0][0]
    array = _submitted(site, "102", chunks=(2, 2, 1), is_array=True)  # a map of 5 calls, bundled 2 by 2
    ex = Executor(site=site, after=[plain, "99", 98, *array.all_jobs])
    assert ex.resources.after == ("99", "98", "101", "102")  # every task of array 102: its own id
    some = Executor(site=site, after=[array.jobs[0][1], array.jobs[2][0], plain, plain])
    assert some.resources.after == ("102_0", "102_2", "101")  # Slurm waits for single array tasks too
    assert Executor(site=site, after=plain).resources.after == ("101",)
    assert Executor(site=site).with_resources(after="7").with_resources(nodes=2).resources.after == ("7",)
    assert Executor(site=site, after=[]).resources.after == ()


def test_a_completed_job_is_not_waited_for_and_a_failed_one_is_an_error():
    site = _site()
    done, failed, cancelled = (_submitted(site, str(i)).jobs[0][0] for i in (1, 2, 3))
    done.set_result(4)
    assert Executor(site=site, after=[done, "5"]).resources.after == ("5",)  # the scheduler may have forgotten it
    failed.state = JobState.FAILED
    failed.set_exception(ValueError("x"))
    with pytest.raises(errors.ResourceError, match=r"^after: job 2 failed \(FAILED\): a job to run after it would "
                                                   r"never start$"):
        Executor(site=site, after=[done, failed])
    mark_cancelled(cancelled)  # as job.cancel() leaves it
    with pytest.raises(errors.ResourceError, match=r"^after: job 3 was cancelled: a job to run after it"):
        Executor(site=site).with_resources(after=[cancelled])


@pytest.mark.parametrize(
    "after, message",
    [
        (3.5, r"^after=3.5 must be a Job, a job id \('12345'\) or a list of them"),
        ({"a": 1}, r"^after=\{'a': 1\} must be a Job"),
        ([object()], r"^after: <object object at .*> \(object\) is neither an hpcbridge Job nor a job id such as "
                     r"'12345', '12345_3' \(Slurm\) or '12345.server', '12345\[\].server' \(PBS\)$"),
        (["12 34"], r"^after: '12 34' \(str\) is neither an hpcbridge Job nor a job id"),
        (["--dependency=x"], r"^after: '--dependency=x' \(str\) is neither"),
        ([True], r"^after: True \(bool\) is neither"),
        ([-1], r"^after: -1 \(int\) is neither"),
    ],
)
def test_what_is_not_a_job_is_refused_before_anything_is_submitted(after, message):
    with pytest.raises(errors.ResourceError, match=message):
        Executor(site=_site(), after=after)


def test_jobs_of_another_site_or_not_yet_submitted_are_refused():
    other = _submitted(_site(scheduler="pbs"), "5.srv").jobs[0][0]
    with pytest.raises(errors.ResourceError, match=r"^after: job 5.srv runs on site 'after-pbs-pbspro', not "
                                                   r"'after-slurm': a scheduler waits only for its own jobs$"):
        Executor(site=_site(), after=[other])
    gathered = _submitted(_site(), "").jobs[0][0]  # inside executor.batch(): no id yet
    with pytest.raises(errors.ResourceError, match=r"is not submitted yet \(executor.batch\(\) submits its jobs "
                                                   r"when the block ends\); give after= outside the batch\(\) block"):
        Executor(site=_site(), after=[gathered])


def test_the_local_site_has_no_dependencies_and_site_configs_cannot_name_jobs():
    with pytest.raises(errors.ResourceError, match=r"^after= needs a Slurm or PBS site; site 'local' \(local\) has "
                                                   r"no job dependencies"):
        Executor(site="local", after=["1"])
    with pytest.raises(errors.ConfigError, match=r"unknown key 'after' in \[defaults\]; valid keys: nodes,"):
        _site(defaults={"after": ["1"]})


# -- directives ---------------------------------------------------------------------------------------------
def test_slurm_waits_with_afterok_and_cancels_a_dependent_that_can_never_run(fixed, golden):
    site = _site(defaults={"partition": "debug", "walltime": "00:10:00"})
    golden("slurm_after.sh", Executor(site=site, after=["101", "102_3"]).render(square, 2))
    with pytest.raises(errors.ResourceError, match=r"^after: '5.srv' is not a Slurm job id \(123, or 123_4 for an "
                                                   r"array task\)$"):
        Executor(site=site, after=["5.srv"]).render(square, 2)


def test_pbspro_waits_with_depend_afterok_and_arrays_by_their_id(fixed, golden):
    ex = Executor(site=_site("pbs"), after=["101.pbs01", "102[].pbs01"])
    golden("pbs_pro_after.sh", ex.render(square, 2))


def test_torque_waits_with_afterok_and_afterokarray(fixed, golden):
    ex = Executor(site=_site("pbs", flavour="torque"), after=["101.srv", "102[].srv", "103"])
    golden("pbs_torque_after.sh", ex.render(square, 2))
    text = Executor(site=_site("pbs", flavour="torque"), after=["103"]).render(square, 2)
    assert "#PBS -W depend=afterok:103\n#SBATCH --kill-on-invalid-dep=yes\n" in text
    text = Executor(site=_site("pbs", flavour="torque"), after=["102[].srv"]).render(square, 2)
    assert "#PBS -W depend=afterokarray:102[].srv\n" in text


@pytest.mark.parametrize("flavour", ["pbspro", "torque"])
def test_pbs_cannot_wait_for_one_task_of_an_array(flavour):
    site = _site("pbs", flavour=flavour)
    array = _submitted(site, "102[].srv", chunks=(1, 1, 1), is_array=True)
    ex = Executor(site=site, after=array.jobs[1])  # one Job of a map: its subjob id
    assert ex.resources.after == ("102[1].srv",)
    with pytest.raises(errors.ResourceError, match=r"^after: 102\[1\].srv is one task of the array 102\[\].srv: PBS "
                                                   r"waits only for whole jobs and arrays; wait for every job of the "
                                                   r"map \(after=jobs\)"):
        ex.render(square, 1)
    assert Executor(site=site, after=array.all_jobs).resources.after == ("102[].srv",)  # the whole map: fine
    with pytest.raises(errors.ResourceError, match=r"^after: '102_1' is not a PBS job id"):
        Executor(site=site, after=["102_1"]).render(square, 1)


def test_a_bare_array_of_the_wrappers_is_waited_for_by_its_plain_id():
    site = _site("pbs", flavour="torque")
    array = _submitted(site, "46", chunks=(1, 1), is_array=True)  # slurm-wlm-torque printed a plain id
    assert [j.job_id for j in array.all_jobs] == ["46[0]", "46[1]"]
    text = Executor(site=site, after=array.all_jobs).render(square, 1)
    assert "#PBS -W depend=afterok:46\n" in text  # Slurm's afterok on an array id: every task


# -- the error of a dependent that never ran ------------------------------------------------------------------
def _resolve(sub, status):
    sub.final_at[0] = (status, 0.0)
    assert sub.try_resolve(0, now=100.0)
    return sub.jobs[0][0]


@pytest.mark.parametrize("status", [
    NativeStatus("604", JobState.CANCELLED, "CANCELLED", 0, "", "None assigned"),  # sacct
    NativeStatus("604", JobState.CANCELLED, "CANCELLED", None, "DependencyNeverSatisfied", ""),  # squeue, scontrol
])
def test_a_dependent_cancelled_by_slurm_says_its_dependency_failed(status):
    sub = _submitted(_site(), "604")
    sub.after = ("603", "601_2")
    job = _resolve(sub, status)
    with pytest.raises(errors.JobDependencyError) as info:
        job.result(timeout=0)
    assert str(info.value) == (
        "job 604 never ran: it was to start after 603 and 601_2 completed successfully, and the scheduler "
        "cancelled it (CANCELLED) because that can no longer happen (a job it waited for failed, was cancelled or "
        "timed out)"
    )
    assert info.value.after == ("603", "601_2") and job.state == JobState.CANCELLED
    assert isinstance(info.value, errors.JobCancelledError)  # still a cancellation for code that catches those


@pytest.mark.parametrize(
    "after, status",
    [
        ((), NativeStatus("604", JobState.CANCELLED, "CANCELLED", 0, "", "None assigned")),  # no dependency
        (("603",), NativeStatus("604", JobState.CANCELLED, "CANCELLED by 2001", 0, "", "None assigned")),  # scancel
        (("603",), NativeStatus("604", JobState.CANCELLED, "CANCELLED", 0, "", "node2")),  # it had started
        # without accounting (squeue/scontrol: no "by UID"): a user's scancel of a waiting dependent
        (("603",), NativeStatus("604", JobState.CANCELLED, "CANCELLED", None, "Dependency", "")),
        (("603",), NativeStatus("604", JobState.CANCELLED, "CANCELLED", None, "JobHeldUser", "")),
    ],
)
def test_other_cancellations_stay_plain_cancellations(after, status):
    sub = _submitted(_site(), "604")
    sub.after = after
    job = _resolve(sub, status)
    with pytest.raises(errors.JobCancelledError) as info:
        job.result(timeout=0)
    assert type(info.value) is errors.JobCancelledError
    assert str(info.value) == f"job 604 was cancelled (state {status.native})"


def test_a_dependent_the_wrappers_removed_without_a_word_names_its_dependency():
    sub = _submitted(_site("pbs", flavour="torque"), "609")
    sub.after = ("608",)
    job = _resolve(sub, NativeStatus("609", JobState.COMPLETED, "C (exit status not reported)"))
    with pytest.raises(errors.JobLostError, match=r"without writing a result; .*; it was to start after 608: if one "
                                                  r"of those failed, it never ran$"):
        job.result(timeout=0)


# -- ids the scheduler does not know (checked just before each submission) -----------------------------------
SQUEUE_LOOKUP = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%A|%T"]
SACCT_LOOKUP = ["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,JobIDRaw,State"]
INVALID = (1, "", "slurm_load_jobs error: Invalid job id specified\n")  # squeue -j with no id it knows (22.05)


def _lookup(ids, squeue, sacct=None, **site):
    """check_known against scripted squeue/sacct answers; the commands it ran."""
    from hpcbridge.after import check_known

    answers = {"squeue": squeue} if sacct is None else {"squeue": squeue, "sacct": sacct}
    transport = ScriptedTransport(answers=answers)
    check_known(Backend(_site(**site), transport=transport), ids)
    return transport.calls


def test_ids_slurmctld_holds_pass_whatever_their_state_and_sacct_is_not_asked():
    # a pending array (its tasks listed one by one with --array), a failed job slurmctld still holds (Slurm cancels
    # a dependent of it: JobDependencyError), and an array task's raw id (SLURM_JOB_ID inside one)
    listed = "700_0|700|PENDING\n700_1|701|PENDING\n702|702|FAILED\n23_76|100|RUNNING\n"
    calls = _lookup(("700", "702", "100"), (0, listed, ""))
    assert calls == [[*SQUEUE_LOOKUP, "--jobs=700,702,100"]]


def test_an_id_neither_slurmctld_nor_accounting_knows_is_refused_before_anything_is_written():
    with pytest.raises(errors.ResourceError) as info:
        _lookup(("99999999",), INVALID, (0, "", ""))
    assert str(info.value) == ("after: the scheduler of site 'after-slurm' does not know job 99999999: check the id "
                               "(a job that completed long ago and was forgotten needs no after=)")
    with pytest.raises(errors.ResourceError, match=r"does not know jobs 5_9, 8: check the id"):
        _lookup(("7", "5_9", "8"), (0, "7|7|RUNNING\n", ""), (0, "", ""))  # 5_9: a task the array 5 lacks


def test_a_forgotten_job_must_have_completed_since_slurm_takes_it_for_done():
    calls = _lookup(("650", "651"), (0, "", ""), (0, "650|650|COMPLETED\n651_0|652|COMPLETED\n651_1|653|COMPLETED\n"
                                                  "651_2|654|COMPLETED\n", ""))
    assert calls[1] == [*SACCT_LOOKUP, "--jobs=650,651"]
    with pytest.raises(errors.ResourceError, match=r"^after: job 651 failed \(FAILED\): a job to run after it would "
                                                   r"never start$"):
        _lookup(("651",), INVALID, (0, "651_0|652|COMPLETED\n651_1|653|FAILED\n", ""))
    with pytest.raises(errors.ResourceError, match=r"^after: job 660 was cancelled: a job to run after it would"):
        _lookup(("660",), INVALID, (0, "660|660|CANCELLED by 2001\n", ""))
    # ids restart when a cluster's state is reset: the newest record of an id counts
    _lookup(("670",), INVALID, (0, "670|670|FAILED\n670|670|COMPLETED\n", ""))


def test_without_accounting_only_slurmctld_is_asked():
    with pytest.raises(errors.ResourceError, match=r"does not know job 650"):
        _lookup(("650",), INVALID, accounting=False)  # no sacct scripted: asking it would fail the test


@pytest.mark.parametrize("squeue", [
    (1, "", "squeue: error: Unable to contact slurm controller (connect failure)\n"),
    errors.CommandTimeoutError("squeue did not finish in 30 s"),
])
def test_a_lookup_that_fails_is_logged_and_the_job_submitted_without_the_check(squeue, caplog):
    assert _lookup(("99999999",), squeue) == [[*SQUEUE_LOOKUP, "--jobs=99999999"]]
    assert "could not look up the jobs named in after= (" in caplog.text
    assert "submitting without that check" in caplog.text


def test_schedulers_without_a_lookup_are_not_asked():
    from hpcbridge.after import check_known

    transport = ScriptedTransport()
    check_known(Backend(_site("pbs"), transport=transport), ("101.pbs01",))
    check_known(Backend(_site(), transport=transport), ())  # nothing to wait for
    assert transport.calls == []
