"""The queue's reason and estimated start of waiting jobs, from the poller's one status command (pure logic, on
squeue output recorded from Slurm 22.05)."""

from hpcbridge.backend import Backend
from hpcbridge.schedulers.base import ClusterFacts, Verdict
from hpcbridge.schedulers.slurm import SlurmScheduler
from hpcbridge.sites import site_from_mapping
from hpcbridge.state import JobState
from hpcbridge.testing import ScriptedTransport
from hpcbridge.transport.base import Completed

#: squeue --noheader --array --states=all --format=%i|%T|%r|%N|%S, as the test cluster printed it
SQUEUE = """\
8218|PENDING|BeginTime||2026-12-06T13:26:10
8219|PENDING|Dependency||N/A
8220|RUNNING|None|node2|2026-12-06T13:20:01
8221_[0-1]|PENDING|Priority||2026-12-06T14:00:00
8222|COMPLETED|None|node1|2026-12-06T13:19:00
"""


def test_squeue_gives_a_waiting_jobs_reason_and_estimated_start_and_nothing_for_the_others():
    s = SlurmScheduler(accounting=True)
    query = s.waiting_status_query(["8218", "8219", "8220", "8221", "8222"], ClusterFacts(accounting=True))
    assert query is not None
    assert query.argv == ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r|%N|%S",
                          "--jobs=8218,8219,8220,8221,8222"]
    st = s.parse_status(query, Completed(query.argv, 0, SQUEUE, "")).statuses
    assert (st["8218"].state, st["8218"].reason, st["8218"].start_estimate) == (
        JobState.PENDING, "BeginTime", "2026-12-06T13:26:10")
    assert (st["8219"].reason, st["8219"].start_estimate) == ("Dependency", "")  # N/A: no estimate
    assert st["8220"].state is JobState.RUNNING and st["8220"].start_estimate == ""  # the real start, not an estimate
    assert st["8221_1"].start_estimate == "2026-12-06T14:00:00" and st["8221_1"].reason == "Priority"
    assert st["8222"].state is JobState.COMPLETED and st["8222"].exit_code is None


def test_without_accounting_the_status_query_itself_carries_the_start():
    s = SlurmScheduler(accounting=False)
    facts = ClusterFacts(accounting=False)
    assert s.waiting_status_query(["1"], facts) is None  # status_query is squeue already
    query = s.status_query(["8218"], 0, 0, facts)
    assert "--format=%i|%T|%r|%N|%S" in query.argv
    st = s.parse_status(query, Completed(query.argv, 0, SQUEUE.splitlines()[0], "")).statuses
    assert st["8218"].start_estimate == "2026-12-06T13:26:10"


def test_squeue_that_forgot_every_job_is_an_empty_answer_even_where_sacct_is_the_status_command():
    s = SlurmScheduler(accounting=True)
    query = s.waiting_status_query(["9"], ClusterFacts(accounting=True))
    assert query is not None
    answer = s.parse_status(query, Completed(query.argv, 1, "", "slurm_load_jobs error: Invalid job id specified\n"))
    assert answer.verdict is Verdict.ANSWERED and not answer.statuses


def _backend(accounting: bool) -> Backend:
    site = site_from_mapping("rec", {"scheduler": "slurm", "workdir": "/w", "accounting": accounting})
    return Backend(site, transport=ScriptedTransport(answers={
        "squeue": (0, "12|PENDING|Resources||2026-12-06T15:00:00\n", ""),
        "sacct": (0, "12|PENDING|0:0|None assigned\n", ""),
    }))


def test_the_backend_asks_squeue_only_while_every_job_waits():
    b = _backend(accounting=True)
    assert b.query_status(["12"], 0, waiting=True)["12"].start_estimate == "2026-12-06T15:00:00"
    assert b.query_status(["12"], 0)["12"].start_estimate == ""
    assert [c[0] for c in b.transport.calls] == ["squeue", "sacct"]
    b = _backend(accounting=False)
    assert b.query_status(["12"], 0, waiting=True)["12"].reason == "Resources"
    assert [c[0] for c in b.transport.calls] == ["squeue"]
