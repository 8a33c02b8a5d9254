"""Inside an allocation: which job, how long it has left, and the walltime warning's arithmetic (pure parts)."""

import pytest

from hpcbridge.here import Enclosing, find_allocation, here, hms, left_from_end, walltime_message
from hpcbridge.schedulers.pbs import PBSScheduler
from hpcbridge.schedulers.slurm import SlurmScheduler, slurm_duration


@pytest.mark.parametrize("text, seconds", [
    ("45", 45), ("3:00", 180), ("1:03:00", 3780), ("12:00:01", 43201), ("1-00:00:00", 86400),
    ("2-03", 2 * 86400 + 3 * 3600), ("1-02:03", 86400 + 2 * 3600 + 180),
    ("UNLIMITED", None), ("NOT_SET", None), ("INVALID", None), ("", None), ("1:2:3:4", None),
])
def test_slurms_durations(text, seconds):
    assert slurm_duration(text) == seconds


def test_the_time_left_commands_and_their_answers():
    assert SlurmScheduler.time_left_argv("8227") == ["squeue", "--noheader", "--jobs=8227", "--format=%L"]
    assert SlurmScheduler.parse_time_left("   41:10\n") == 2470
    assert SlurmScheduler.parse_time_left("") is None  # squeue no longer lists it
    assert PBSScheduler.time_left_argv("12.srv") == ["qstat", "-f", "12.srv"]
    qstat = ("Job Id: 12.srv\n    job_state = R\n    Resource_List.walltime = 01:00:00\n"
             "    resources_used.walltime = 00:18:50\n")
    assert PBSScheduler.parse_time_left(qstat) == 2470
    queued = "Job Id: 12.srv\n    job_state = Q\n    Resource_List.walltime = 00:10:00\n"
    assert PBSScheduler.parse_time_left(queued) == 600
    assert PBSScheduler.parse_time_left("Job Id: 12.srv\n    job_state = R\n") is None  # no limit


def test_which_allocation_the_environment_names():
    assert find_allocation({"HOME": "/home/alice"}) is None
    allocation, job_id = find_allocation({"SLURM_JOB_ID": "8227", "PBS_JOBID": "1.srv"})
    assert (allocation.scheduler, job_id) == ("slurm", "8227")
    allocation, job_id = find_allocation({"PBS_JOBID": "12[3].srv"})
    assert (allocation.scheduler, job_id) == ("pbs", "12[3].srv")
    assert here({"PATH": "/usr/bin"}) is None


def test_the_end_time_variable_needs_no_query():
    """SLURM_JOB_END_TIME (Slurm 23.02+): the time left from the environment alone."""
    env = {"SLURM_JOB_ID": "8227", "SLURM_JOB_NODELIST": "node2", "SLURM_JOB_END_TIME": "4102444800"}
    found = here(env)
    assert found is not None and found.source == "SLURM_JOB_END_TIME"
    assert (found.scheduler, found.job_id, found.nodes) == ("slurm", "8227", "node2")
    assert found.seconds_left() is not None and found.seconds_left() > 10 * 365 * 86400
    assert left_from_end("1000", now_epoch=400.5) == 599.5
    assert left_from_end("1000", now_epoch=2000) == 0.0
    assert left_from_end("0", now_epoch=5) is None and left_from_end("soon", now_epoch=5) is None


def test_seconds_left_count_down_from_when_they_were_measured_and_the_line_says_so():
    e = Enclosing("slurm", "8227", "node2", left_s=2470.0, measured_at=100.0, source="squeue")
    assert e.seconds_left(now=100.0) == 2470.0
    assert e.seconds_left(now=170.0) == 2400.0
    assert e.seconds_left(now=5000.0) == 0.0
    assert e.line(now=170.0) == "inside Slurm job 8227 on node2, 0:40:00 left"
    assert Enclosing("pbs", "12.srv").line() == "inside PBS job 12.srv"
    assert hms(86400 + 61) == "1-00:01:01" and hms(59.9) == "0:00:59"


def test_the_walltime_warning_only_for_a_job_longer_than_what_is_left():
    e = Enclosing("slurm", "8227", "node2", left_s=300.0)
    assert walltime_message(300, 300.0, "9001", e) is None
    message = walltime_message(600, 299.5, "9001", e)
    assert message == (
        "job 9001 asks for walltime 0:10:00, longer than what is left of this notebook's own allocation "
        "(Slurm job 8227: 0:04:59 left): it may still run when this kernel ends. It is not cancelled then, and "
        "`hpcbridge status` in a new server lists it; ask for less walltime, or start the notebook server with more."
    )
