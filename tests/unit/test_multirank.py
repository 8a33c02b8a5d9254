"""How a multi-rank task resolves from its ranks' result files (submission.Submission; a scripted transport, no
cluster: nothing runs, no log or result file can be read)."""

import cloudpickle
import pytest

from hpcbridge import errors
from hpcbridge.backend import Backend
from hpcbridge.schedulers.base import NativeStatus
from hpcbridge.sites import site_from_mapping
from hpcbridge.state import JobState
from hpcbridge.submission import Submission
from hpcbridge.testing import ScriptedTransport

GRACE_S = 3.0  # the site's result_grace_s


def _sub(ranks=6, chunks=(1,)):
    site = site_from_mapping("fake", {"scheduler": "slurm", "workdir": "/w", "result_grace_s": GRACE_S})
    backend = Backend(site, transport=ScriptedTransport())
    return Submission(backend, tag="t", folder="/f", script="", chunks=list(chunks), is_array=False,
                      ranks=ranks, submit_time=1.0, job_id="42")


def ok(value, finished=10.0, host="n1"):
    return {"outcomes": [("ok", value)], "rank": 0, "host": host, "started": 1.0, "finished": finished}


def err(exc, finished, host="n3", tb="Traceback ...\nValueError\n"):
    outcome = ("err", cloudpickle.dumps(exc), f"builtins.{type(exc).__name__}", str(exc), tb)
    return {"outcomes": [outcome], "rank": 0, "host": host, "started": 1.0, "finished": finished}


def test_all_ranks_in_resolves_with_every_ranks_value_in_rank_order():
    sub = _sub(ranks=3)
    for rank in (2, 0, 1):
        sub.add_payload(0, rank, ok(rank * 10, finished=10.0 - rank))
        resolved = sub.try_resolve(0, now=100.0)
    assert resolved
    job = sub.jobs[0][0]
    assert job.result() == 0 and job.results() == [0, 10, 20] and job.state == JobState.COMPLETED


def test_one_failed_rank_fails_the_task_at_once_without_waiting_for_the_others():
    sub = _sub(ranks=6)
    sub.add_payload(0, 4, err(ValueError("boom on rank 4"), finished=5.0))
    assert sub.try_resolve(0, now=100.0)  # ranks 0-3 and 5 never wrote anything: the launcher killed them
    with pytest.raises(ValueError, match="boom on rank 4") as info:
        sub.jobs[0][0].result()
    assert info.value.rank == 4 and "Remote traceback (job 42, rank 4, host n3)" in str(info.value.__cause__)


def test_the_first_rank_to_fail_is_reported_not_the_lowest():
    """Rank 0's error is the echo of rank 4's (its collective lost a peer); rank 4 failed first."""
    sub = _sub(ranks=6)
    sub.add_payload(0, 0, err(RuntimeError("Connection closed by peer"), finished=5.2, host="n1"))
    sub.add_payload(0, 4, err(ValueError("boom on rank 4"), finished=5.0))
    sub.try_resolve(0, now=100.0)
    with pytest.raises(ValueError, match="boom on rank 4"):
        sub.jobs[0][0].result()


def test_a_completed_job_with_missing_ranks_waits_for_the_filesystem_then_names_them():
    sub = _sub(ranks=3)
    sub.add_payload(0, 0, ok(1))
    sub.add_payload(0, 2, ok(3))
    sub.final_at[0] = (NativeStatus("42", JobState.COMPLETED, "COMPLETED", 0, "", "n[1-3]"), 50.0)
    assert not sub.try_resolve(0, now=50.0 + GRACE_S / 2)  # rank 1's file may still be on its way (site's grace)
    assert sub.try_resolve(0, now=50.0 + GRACE_S)
    with pytest.raises(errors.JobLostError, match=r"job 42: rank\(s\) 1 of 3 wrote no result"):
        sub.jobs[0][0].result()


def test_a_killed_job_is_reported_as_killed_even_with_some_results():
    sub = _sub(ranks=2)
    sub.add_payload(0, 0, ok(1))
    sub.final_at[0] = (NativeStatus("42", JobState.TIMEOUT, "TIMEOUT", 0, "", "n1"), 50.0)
    assert sub.try_resolve(0, now=50.0)
    with pytest.raises(errors.JobTimeoutError, match="hit its walltime"):
        sub.jobs[0][0].result()


def test_single_rank_jobs_are_unchanged():
    sub = _sub(ranks=1)
    sub.add_payload(0, 0, ok("x"))
    assert sub.try_resolve(0, now=1.0) and sub.jobs[0][0].results() == ["x"]


def _unloadable(host="n3", finished=5.0):
    """A rank's error whose exception cannot be rebuilt on this side (its class exists only in the job)."""
    outcome = ("err", b"not a pickle", "only_in_the_job.Boom", "boom on rank 4", "Traceback ...\nBoom\n")
    return {"outcomes": [outcome], "rank": 0, "host": host, "started": 1.0, "finished": finished}


def test_a_failed_rank_whose_exception_cannot_be_rebuilt_is_a_remote_error_with_its_rank():
    sub = _sub(ranks=6)
    sub.add_payload(0, 4, _unloadable())
    assert sub.try_resolve(0, now=100.0)
    with pytest.raises(errors.RemoteError) as info:
        sub.jobs[0][0].result()
    exc = info.value
    assert (exc.rank, exc.type_name, exc.job_id) == (4, "only_in_the_job.Boom", "42")
    assert str(exc) == "only_in_the_job.Boom: boom on rank 4 (job 42, rank 4, host n3)"


def test_a_single_process_jobs_remote_error_has_no_rank():
    sub = _sub(ranks=1)
    sub.add_payload(0, 0, _unloadable(host="n1"))
    assert sub.try_resolve(0, now=100.0)
    with pytest.raises(errors.RemoteError) as info:
        sub.jobs[0][0].result()
    assert info.value.rank is None and str(info.value) == "only_in_the_job.Boom: boom on rank 4 (job 42, host n1)"
