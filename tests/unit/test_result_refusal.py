"""A result file is unpickled only when nobody but the user could have written it: the decision
(outcome.result_refusal), and the poller's and the submission's use of it with a scripted transport (pure logic:
the real files are in tests/local/test_local_result_refusal.py, the cluster in tests/live/test_safety_live.py)."""

from __future__ import annotations

import builtins

import cloudpickle
import pytest

from hpcbridge import errors, outcome
from hpcbridge.backend import Backend
from hpcbridge.schedulers.base import NativeStatus
from hpcbridge.sites import site_from_mapping
from hpcbridge.state import JobState
from hpcbridge.store import JobFolder
from hpcbridge.submission import Submission
from hpcbridge.testing import ScriptedTransport
from hpcbridge.transport.base import OwnedFiles, Owner

ME = 2001
FOLDER = JobFolder("/scratch/alice/hpcb/0123456789abcdef")
RESULT = FOLDER.result(0, 0)
ADVICE = ("hpcbridge makes job folders 0700 and their files 0600; if nobody else wrote there, make {} private again "
          "(chmod go-w {}) and attach the job again (hpcbridge.attach), else submit the job again")
PREFIX = (f"its result {RESULT} was not unpickled, because someone other than you could have written it "
          "(unpickling runs code): ")


def read(**modes: Owner) -> OwnedFiles:
    """What the transport reports: private folders and file of uid ME, except what ``modes`` says
    (``folder``, ``res``, ``file``)."""
    owners = {FOLDER.path: modes.get("folder", Owner(ME, 0o700)),
              FOLDER.results_dir: modes.get("res", Owner(ME, 0o700)), RESULT: modes.get("file", Owner(ME, 0o600))}
    return OwnedFiles({RESULT: b"..."}, owners, ME)


def test_private_folders_and_file_of_the_user_are_trusted():
    assert outcome.result_refusal(FOLDER, RESULT, read()) is None
    # read-only for others, or more private still, is fine too
    assert outcome.result_refusal(FOLDER, RESULT, read(folder=Owner(ME, 0o755), res=Owner(ME, 0o711),
                                                       file=Owner(ME, 0o444))) is None


def test_a_group_writable_job_folder_is_refused_saying_which_its_mode_and_what_to_do():
    message, paths = outcome.result_refusal(FOLDER, RESULT, read(folder=Owner(ME, 0o770)))
    assert message == (PREFIX + f"the job folder {FOLDER.path} is group-writable (mode 0770, owner uid 2001: you). "
                       + ADVICE.format("it", FOLDER.path))
    assert paths == [FOLDER.path]


def test_world_writable_results_folder_and_file_are_both_named():
    message, paths = outcome.result_refusal(FOLDER, RESULT, read(res=Owner(ME, 0o1757), file=Owner(ME, 0o666)))
    assert message == (
        PREFIX + f"its results folder {FOLDER.results_dir} is world-writable (mode 1757, owner uid 2001: you); the "
        f"result file {RESULT} is group and world-writable (mode 0666, owner uid 2001: you). "
        + ADVICE.format("them", f"{FOLDER.results_dir} {RESULT}")
    )
    assert paths == [FOLDER.results_dir, RESULT]


def test_a_file_of_another_user_is_refused_even_when_private():
    message, paths = outcome.result_refusal(FOLDER, RESULT, read(file=Owner(2002, 0o600)))
    assert message == (PREFIX + f"the result file {RESULT} belongs to uid 2002, not to you (uid 2001; mode 0600). "
                       "hpcbridge makes job folders 0700 and their files 0600; submit the job again, and find out "
                       "who changed its folder")
    assert paths == [RESULT]
    assert outcome.result_refusal(FOLDER, RESULT, read(folder=Owner(0, 0o700)))[1] == [FOLDER.path]  # root's too


def test_owners_that_did_not_come_back_are_refused():
    got = OwnedFiles({RESULT: b"..."}, {RESULT: Owner(ME, 0o600)}, ME)  # the folders' facts are missing
    message, paths = outcome.result_refusal(FOLDER, RESULT, got)
    assert f"the job folder {FOLDER.path} could not be checked (its owner and mode did not come back)" in message
    assert paths == [FOLDER.path, FOLDER.results_dir]


class Planted:
    """What an attacker's pickle does: run code on load (here: set a flag)."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins._hpcbridge_test_planted = True",))


def planted_result() -> bytes:
    return cloudpickle.dumps({"outcomes": [("ok", Planted())], "rank": 0, "host": "n1", "started": 1.0,
                              "finished": 2.0})


def _sub(transport: ScriptedTransport, ranks: int = 1) -> Submission:
    site = site_from_mapping("refusal", {"scheduler": "slurm", "workdir": "/scratch/alice/hpcb"})
    return Submission(Backend(site, transport=transport), tag="0123456789abcdef", folder=FOLDER.path, script="",
                      chunks=[1], is_array=False, ranks=ranks, submit_time=1.0, job_id="42")


@pytest.fixture
def flag():
    yield
    if hasattr(builtins, "_hpcbridge_test_planted"):
        del builtins._hpcbridge_test_planted


def test_the_poller_refuses_a_result_in_a_group_writable_folder_without_unpickling_it(flag):
    t = ScriptedTransport(files={RESULT: planted_result()}, uid=ME, owners={FOLDER.path: Owner(ME, 0o770)})
    sub = _sub(t)
    assert sub.backend.poller._check_files([sub])
    with pytest.raises(errors.UntrustedResultError) as info:
        sub.jobs[0][0].result(timeout=0)
    assert str(info.value) == "job 42: " + PREFIX + (
        f"the job folder {FOLDER.path} is group-writable (mode 0770, owner uid 2001: you). "
        + ADVICE.format("it", FOLDER.path))
    assert info.value.paths == (FOLDER.path,) and info.value.job_id == "42"
    assert not hasattr(builtins, "_hpcbridge_test_planted")  # never unpickled
    assert sub.jobs[0][0].state == JobState.FAILED
    # the folders' facts came with the file, in one read (then the stderr tail, as for any job that failed)
    assert t.programs() == ["listdir", "read_with_owners", "read_tail"]


def test_the_same_file_in_private_folders_is_unpickled(flag):
    """The other side of the test above: the planted pickle does run when the folders are private (what the check
    stops)."""
    t = ScriptedTransport(files={RESULT: planted_result()}, uid=ME)
    sub = _sub(t)
    assert sub.backend.poller._check_files([sub])
    assert sub.jobs[0][0].result(timeout=0) is None and builtins._hpcbridge_test_planted is True


def test_a_result_read_again_after_the_job_ended_is_checked_too(flag):
    """The re-read by name before a job is declared lost (Submission._read_missing_results)."""
    t = ScriptedTransport(files={RESULT: planted_result()}, uid=ME, owners={RESULT: Owner(2002, 0o644)})
    sub = _sub(t)
    sub.final_at[0] = (NativeStatus("42", JobState.COMPLETED, "COMPLETED", 0, "", "n1"), 50.0)
    assert sub.try_resolve(0, now=100.0)
    with pytest.raises(errors.UntrustedResultError, match=f"the result file {RESULT} belongs to uid 2002, not to "
                                                          r"you \(uid 2001; mode 0644\)"):
        sub.jobs[0][0].result(timeout=0)
    assert not hasattr(builtins, "_hpcbridge_test_planted")


def test_one_refused_rank_fails_a_multi_rank_task_at_once(flag):
    t = ScriptedTransport(files={FOLDER.result(0, 1): planted_result()}, uid=ME,
                          owners={FOLDER.results_dir: Owner(ME, 0o777)})
    sub = _sub(t, ranks=3)
    assert sub.backend.poller._check_files([sub])  # ranks 0 and 2 have written nothing yet
    with pytest.raises(errors.UntrustedResultError, match="its results folder .* is group and world-writable"):
        sub.jobs[0][0].result(timeout=0)
    assert not hasattr(builtins, "_hpcbridge_test_planted")
