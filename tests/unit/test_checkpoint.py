"""hpcbridge.checkpoint in a job folder (no scheduler: the functions read the in-job variables)."""

import os
import signal
import subprocess
import sys

import pytest

import hpcbridge
from hpcbridge import checkpoint
from hpcbridge.errors import SerializationError, StopForRequeue, UsageError
from hpcbridge.store import JobFolder


def test_the_in_job_names_are_the_package_s(monkeypatch):
    assert hpcbridge.should_stop is checkpoint.should_stop and hpcbridge.time_left is checkpoint.time_left
    assert hpcbridge.checkpoint is checkpoint


def test_save_load_and_the_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCBRIDGE_FOLDER", str(tmp_path))
    monkeypatch.setenv("HPCBRIDGE_TASK", "2")
    monkeypatch.setenv("HPCBRIDGE_CALL", "1")
    monkeypatch.setattr(checkpoint, "_warned_at", None)
    assert checkpoint.load(default="first run") == "first run"
    checkpoint.save({"step": 3})
    assert checkpoint.load() == {"step": 3}
    assert os.path.exists(JobFolder(str(tmp_path)).checkpoint_marker(2))
    with pytest.raises(SerializationError, match=r"^checkpoint.save: the state cannot be pickled \(generator: "):
        checkpoint.save(x for x in ())
    assert checkpoint.load() == {"step": 3}  # the last good checkpoint stays
    monkeypatch.setenv("HPCBRIDGE_DEADLINE", "99999999999")
    monkeypatch.setenv("HPCBRIDGE_SIGNAL_GRACE", "30")
    assert not checkpoint.should_stop() and checkpoint.time_left() > 30
    checkpoint.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    assert checkpoint.should_stop() and 29 <= checkpoint.time_left() <= 30
    with pytest.raises(StopForRequeue):
        checkpoint.save({"step": 4})
    assert checkpoint.load() == {"step": 4}


@pytest.mark.parametrize("on_term", ["1", None])
def test_a_sigterm_warns_the_call_only_where_the_batch_shell_says_so(monkeypatch, on_term):
    """PBS with requeue on (HPCBRIDGE_WARN_ON_TERM=1): the server's SIGTERM to the whole job is the warning, not the
    worker's end; elsewhere SIGTERM keeps its default meaning."""
    monkeypatch.setattr(checkpoint, "_warned_at", None)
    if on_term:
        monkeypatch.setenv("HPCBRIDGE_WARN_ON_TERM", on_term)
    else:
        monkeypatch.delenv("HPCBRIDGE_WARN_ON_TERM", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    try:
        checkpoint.install()
        if on_term:
            os.kill(os.getpid(), signal.SIGTERM)
            assert checkpoint.should_stop()
        else:
            assert signal.getsignal(signal.SIGTERM) is before and not checkpoint.should_stop()
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, before)


def test_outside_a_job_it_says_so(monkeypatch):
    monkeypatch.delenv("HPCBRIDGE_FOLDER", raising=False)
    with pytest.raises(UsageError, match="inside an hpcbridge job only"):
        checkpoint.load()
    assert checkpoint.time_left() is None or "HPCBRIDGE_DEADLINE" in os.environ


def test_importing_the_worker_does_not_import_checkpoint():
    code = "import sys, hpcbridge.worker; print('hpcbridge.checkpoint' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"


def test_runs_from_records_and_notes():
    from hpcbridge import attempts

    records = [("REQUEUED", "node1", "2026-12-06T12:45:06", "2026-12-06T12:45:13"),
               ("PREEMPTED", "node2", "2026-12-06T12:45:38", "2026-12-06T12:46:00"),
               ("RUNNING", "node3", "2026-12-06T12:46:30", "Unknown")]
    runs = attempts.build(records, {0: "TIMEOUT 100.5 101.0\n", 1: "PREEMPTED 200 -\n"}, last="done")
    assert [(a.nodes, a.ended, a.warned_at, a.requeued_at) for a in runs] == [
        ("node1", "TIMEOUT", 100.5, 101.0), ("node2", "PREEMPTED", 200.0, None), ("node3", "done", None, None)]
    assert attempts.describe(runs[:1]) == "run 1: node1 2026-12-06T12:45:06 - 2026-12-06T12:45:13 TIMEOUT"


# scontrol --oneliner show job (Slurm 22.05's format, fewer fields) of a job requeued once by its batch shell, then
# completed
SHOWN = ("JobId=11931 JobName=hpcb-train UserId=alice(1001) JobState=COMPLETED Reason=None Dependency=(null) "
         "Requeue=1 Restarts=1 BatchFlag=1 ExitCode=0:0 RunTime=00:00:41 TimeLimit=00:05:00 "
         "SubmitTime=2026-12-06T16:26:40 StartTime=2026-12-06T16:26:58 EndTime=2026-12-06T16:27:39 "
         "Partition=preemptible ReqNodeList=node3 ExcNodeList=(null) NodeList=node3 NumNodes=1 NumCPUs=1\n")


def test_without_accounting_the_runs_come_from_scontrol_and_the_shell_s_notes():
    from hpcbridge import attempts
    from hpcbridge.schedulers.base import ClusterFacts
    from hpcbridge.schedulers.slurm import SlurmScheduler

    slurm = SlurmScheduler(accounting=False)
    facts = ClusterFacts(accounting=False)
    assert slurm.attempts_argv("11931", facts) == ["scontrol", "--oneliner", "show", "job", "11931"]
    records = slurm.parse_attempts(SHOWN)
    assert records == [("REQUEUED", "", "", ""), ("COMPLETED", "node3", "2026-12-06T16:26:58", "2026-12-06T16:27:39")]
    assert slurm.parse_attempt_costs(SHOWN) == [(None, None), (None, None)]
    note = "PREEMPTED 1765038410.25 1765038411.5 2026-12-06T16:26:41 2026-12-06T16:26:51 node3\n"
    first, last = attempts.build(records, {0: note})
    assert (first.nodes, first.start, first.end, first.ended) == (
        "node3", "2026-12-06T16:26:41", "2026-12-06T16:26:51", "PREEMPTED")
    assert (first.warned_at, first.requeued_at) == (1765038410.25, 1765038411.5)
    assert (last.nodes, last.start, last.end, last.ended) == (
        "node3", "2026-12-06T16:26:58", "2026-12-06T16:27:39", "done")
    # a run Slurm requeued itself (a node failure) has no note: how it ended and where are unknown
    assert [(a.nodes, a.start, a.ended) for a in attempts.build(records, {})][0] == ("", "", "REQUEUED")
    # an older note (three fields) has none of them; a run the shell did not requeue has no end in its note
    assert attempts.note_run("TIMEOUT 100.5 101.0\n") == ("", "", "")
    assert attempts.note_run("TIMEOUT 100.5 - 2026-12-06T16:26:41 - node[1-2]") == (
        "2026-12-06T16:26:41", "", "node[1-2]")


def test_after_the_warning_the_other_ranks_leave_once_rank_0_saved(tmp_path, monkeypatch):
    """A rank that left first would have its launcher stop rank 0 while it writes: the others wait for its marker."""
    import json
    import threading
    import time

    from hpcbridge import jobenv

    monkeypatch.setenv("HPCBRIDGE_FOLDER", str(tmp_path))
    monkeypatch.setenv("HPCBRIDGE_TASK", "0")
    monkeypatch.setenv("HPCBRIDGE_RESTART", "1")
    monkeypatch.setenv("HPCBRIDGE_SIGNAL_GRACE", "5")
    monkeypatch.delenv("HPCBRIDGE_DEADLINE", raising=False)
    monkeypatch.setattr(checkpoint, "_warned_at", time.time())
    folder = JobFolder(str(tmp_path))
    # rank 0's save after the warning says so in the marker
    monkeypatch.setenv(jobenv.RANK_VAR, "0")
    with pytest.raises(StopForRequeue):
        checkpoint.save({"step": 7})
    with open(folder.checkpoint_marker(0)) as fh:
        assert json.load(fh)["runs"]["1"]["leaving"] is True
    # rank 1 waits for it: here rank 0 saves 0.5 s after rank 1 came to save
    os.remove(folder.checkpoint_marker(0))
    monkeypatch.setenv(jobenv.RANK_VAR, "1")

    def rank_0_saves() -> None:
        time.sleep(0.5)
        with open(folder.checkpoint_marker(0), "w") as fh:
            json.dump({"runs": {"1": {"saved": time.time(), "leaving": True}}}, fh)

    saver = threading.Thread(target=rank_0_saves)
    start = time.time()
    saver.start()
    with pytest.raises(StopForRequeue):
        checkpoint.save({"step": 7})
    saver.join()
    assert 0.5 <= time.time() - start < 1.5
    # rank 0 never saves after the warning: rank 1 leaves 3 s before the end (5 s of grace: about 2 s from now)
    os.remove(folder.checkpoint_marker(0))
    start = time.time()
    with pytest.raises(StopForRequeue):
        checkpoint.save({"step": 7})
    assert 1.0 <= time.time() - start < 3.0
