"""Parsers of Slurm's output, on output recorded from Slurm 22.05 (sacct --parsable2, squeue, scontrol)."""

from hpcbridge.schedulers.base import ClusterFacts, NativeStatus, Verdict, expand_array_id
from hpcbridge.schedulers.slurm import SlurmScheduler, normalise, walltime_arg
from hpcbridge.state import JobState
from hpcbridge.transport.base import Completed

SACCT = """\
41|COMPLETED|0:0|node1
42_0|COMPLETED|0:0|node2
42_1|FAILED|1:0|node3
42_2|CANCELLED by 2001|0:15|node1
42_3|TIMEOUT|0:0|node2
42_4|OUT_OF_MEMORY|0:125|node3
42_[5-7,9%2]|PENDING|0:0|None assigned
43|RUNNING|0:0|node[1-3]
43.batch|RUNNING|0:0|node1
44|NODE_FAIL|1:0|node2
45|PREEMPTED|0:0|node2
"""


def parse(scheduler, stdout, ids=("41",), code=0, stderr="", facts=None):
    """The adapter's answer to ``stdout``, for the query it would make with ``facts`` (the site's by default)."""
    query = scheduler.status_query(list(ids), 0, 0, facts or scheduler.initial_facts())
    return scheduler.parse_status(query, Completed(query.argv, code, stdout, stderr))


def test_sacct_parsable_output_with_arrays_steps_and_ranges():
    st = parse(SlurmScheduler(accounting=True), SACCT).statuses
    assert st["41"].state == JobState.COMPLETED and st["41"].exit_code == 0
    assert st["42_1"].state == JobState.FAILED and st["42_1"].exit_code == 1
    assert st["42_2"].state == JobState.CANCELLED and st["42_2"].native == "CANCELLED by 2001"
    assert st["42_3"].state == JobState.TIMEOUT
    assert st["42_4"].state == JobState.OUT_OF_MEMORY
    assert [k for k in st if k.startswith("42_") and st[k].state == JobState.PENDING] == [
        "42_5", "42_6", "42_7", "42_9"
    ]
    assert st["43"].state == JobState.RUNNING and st["43"].nodes == "node[1-3]"
    assert "43.batch" not in st
    assert st["44"].state == JobState.NODE_FAIL
    assert st["45"].state == JobState.PREEMPTED


def test_squeue_output_when_accounting_is_off():
    out = "50_0|COMPLETED|None|node1\n50_1|RUNNING|None|node2\n50_[2-3]|PENDING|Resources|\n"
    st = parse(SlurmScheduler(accounting=False), out).statuses
    assert st["50_0"].state == JobState.COMPLETED
    assert st["50_1"].state == JobState.RUNNING
    assert st["50_3"].state == JobState.PENDING and st["50_3"].reason == "Resources"


def test_scontrol_show_job_oneliner():
    out = (
        "JobId=77 JobName=hpcb UserId=alice(2001) JobState=CANCELLED Reason=None Dependency=(null) "
        "ExitCode=0:15 NodeList=node2 BatchHost=node2\n"
    )
    st = SlurmScheduler(accounting=False).parse_show_job("77", out)
    assert st is not None and st.state == JobState.CANCELLED and st.exit_code == 0 and st.nodes == "node2"
    assert SlurmScheduler().parse_show_job("77", "slurm_load_jobs error: Invalid job id specified") is None


def test_status_query_is_one_command_with_only_the_needed_fields():
    argv = SlurmScheduler(accounting=True).status_query(["41", "42"], 1_700_000_000, 1_700_000_060, ClusterFacts()).argv
    assert argv[0] == "sacct" and "--jobs=41,42" in argv and "--format=JobID,State,ExitCode,NodeList" in argv
    assert "--parsable2" in argv and "--allocations" in argv and any(a.startswith("--starttime=") for a in argv)
    assert not any("json" in a for a in argv)
    assert "--starttime=now-660" in argv  # the oldest submission's age by the client's clock, plus 10 minutes
    argv = SlurmScheduler(accounting=False).status_query(["41"], 0, 0, ClusterFacts(accounting=False)).argv
    assert argv[:2] == ["squeue", "--noheader"] and "--array" in argv and "--states=all" in argv


def test_a_failed_status_command_is_data():
    """What a non-zero exit means comes back in the answer, with what it taught (nothing is kept in the adapter)."""
    s = SlurmScheduler(accounting=True)
    off = parse(s, "", code=1, stderr="sacct: error: Slurm accounting storage is disabled\n")
    assert off.verdict is Verdict.ASK_AGAIN and off.facts == ClusterFacts(accounting=False)
    assert off.note.startswith("it has no Slurm accounting; using squeue and scontrol show job")
    assert s.accounting is True and s.initial_facts() == ClusterFacts(accounting=True)
    assert parse(s, "", code=1, stderr="sacct: error: Problem talking to the database\n").verdict is Verdict.RETRY
    forgotten = parse(s, "", code=1, stderr="slurm_load_jobs error: Invalid job id specified\n", facts=off.facts)
    assert forgotten.verdict is Verdict.ANSWERED and forgotten.statuses == {} and forgotten.facts is None
    assert s.show_job_argv("12", ClusterFacts()) is None  # sacct has every job
    assert s.show_job_argv("12", off.facts) == ["scontrol", "--oneliner", "show", "job", "12"]


def test_parse_submit_handles_cluster_suffix_and_warnings():
    s = SlurmScheduler()
    assert s.parse_submit("1234\n") == "1234"
    assert s.parse_submit("sbatch: warning: something\n1235;cluster2\n") == "1235"


def test_state_names():
    assert normalise("CANCELLED by 0") == JobState.CANCELLED
    assert normalise("COMPLETING") == JobState.RUNNING
    assert normalise("REQUEUED") == JobState.PENDING
    assert normalise("SOMETHING_NEW") == JobState.UNKNOWN
    assert not JobState.UNKNOWN.is_final and JobState.PREEMPTED.is_final


def test_expand_array_ids():
    assert expand_array_id("7_[0-2]") == ["7_0", "7_1", "7_2"]
    assert expand_array_id("7_[1,4-5%1]") == ["7_1", "7_4", "7_5"]
    assert expand_array_id("7_[0-6:3]") == ["7_0", "7_3", "7_6"]
    assert expand_array_id("7_3") == ["7_3"]


def test_walltime_argument():
    assert walltime_arg(5400) == "01:30:00"
    assert walltime_arg(93784) == "1-02:03:04"


def test_a_memory_kill_by_the_accounting_poll_is_out_of_memory():
    # the job's stderr as slurmstepd left it on the test cluster (JobAcctGatherParams=OverMemoryKill)
    tail = (
        "slurmstepd-node1: error: StepId=606.batch exceeded memory limit (432996352 > 104857600), being killed\n"
        "slurmstepd-node1: error: Exceeded job memory limit\n"
        "slurmstepd-node1: error: *** JOB 606 ON node1 CANCELLED AT 2026-12-01T07:59:54 ***\n"
    )
    s = SlurmScheduler()
    failed = NativeStatus("606", JobState.FAILED, "FAILED", 0, "", "node1")
    assert s.explain_end(failed, tail).state == JobState.OUT_OF_MEMORY
    assert s.explain_end(failed, tail).native == "FAILED"  # what Slurm said stays visible
    assert s.explain_end(failed, "Traceback ...\nMemoryError\n") is failed  # the job's own failure
    timeout = NativeStatus("607", JobState.TIMEOUT, "TIMEOUT", 0, "", "node1")
    assert s.explain_end(timeout, tail) is timeout
