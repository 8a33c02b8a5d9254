"""Exactly-once submission after a dropped connection or a hung command: the backend's decisions (pure logic, a
scripted transport), and the SUBMIT_ONCE wrapper itself run by a real /bin/sh.

The live versions (a real sshd killed while sbatch is in flight; an sbatch that hangs) are in
tests/live/test_ssh_live.py and tests/live/test_core_live.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from hpcbridge import submit_once
from hpcbridge.backend import Backend
from hpcbridge.errors import (
    CommandTimeoutError,
    ConnectionLostError,
    HostUnreachableError,
    SchedulerError,
    TransportError,
)
from hpcbridge.schedulers.slurm import SlurmScheduler
from hpcbridge.sites import site_from_mapping
from hpcbridge.submit_once import ALREADY_STARTED, SubmitOnce, submit_once_argv
from hpcbridge.testing import FileStep, ScriptedTransport, Step
from hpcbridge.transport.base import Completed

SQUEUE = "3338|(null)\n3340_[0-49]|hpcbridge:aaaa\n3341_7|hpcbridge:bbbb\n3341_8|hpcbridge:bbbb\n3342|hpcbridge:cc\n"
MARKER = "/w/bbbb/submitted"


def make(steps: Sequence[Step], monkeypatch: pytest.MonkeyPatch, file_steps: Sequence[FileStep] = (),
         scheduler: Optional[Dict[str, Any]] = None) -> Tuple[Backend, ScriptedTransport]:
    monkeypatch.setattr(submit_once, "FIND_BY_TAG_WAITS_S", (0.0,) * 6)
    t = ScriptedTransport(steps, file_steps=file_steps)
    b = Backend(site_from_mapping("rec", {"scheduler": "slurm", "workdir": "/w", **(scheduler or {})}), transport=t)
    return b, t


def lost(maybe_ran: bool = True) -> ConnectionLostError:
    return ConnectionLostError("the SSH connection to hpc dropped while trying to run sbatch", maybe_ran=maybe_ran)


def names(t: ScriptedTransport) -> List[str]:
    """What the backend did, in order: the submit command (/bin/sh: under its marker), lookups, record reads."""
    return [c[0] for c in t.calls]


def test_parse_find_by_tag() -> None:
    s = SlurmScheduler()
    assert s.find_by_tag_argv("aaaa") == ["squeue", "--me", "--noheader", "--states=all", "--format=%i|%k"]
    assert s.parse_find_by_tag(SQUEUE, "aaaa") == "3340"  # a pending array
    assert s.parse_find_by_tag(SQUEUE, "bbbb") == "3341"  # array tasks
    assert s.parse_find_by_tag(SQUEUE, "cc") == "3342"
    assert s.parse_find_by_tag(SQUEUE, "c") is None  # whole comment only
    assert s.parse_find_by_tag("", "aaaa") is None


def test_without_a_marker_a_job_found_by_its_tag_is_not_submitted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([lost(), (0, "3338|(null)\n", ""), (0, SQUEUE, "")], monkeypatch)
    out = b.run_checked(["sbatch", "--parsable", "/w/bbbb/script.sh"], "submit the job", tag="bbbb")
    assert b.scheduler.parse_submit(out.stdout) == "3341"
    assert names(t) == ["sbatch", "squeue", "squeue"]  # the second look found the in-flight job


def test_without_a_marker_a_job_not_found_is_never_submitted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([lost()] + [(0, "", "")] * 5, monkeypatch)
    with pytest.raises(ConnectionLostError, match="no job carries the tag hpcbridge:dddd yet, and it is not "
                                                  "submitted again") as err:
        b.run_checked(["sbatch", "--parsable", "/w/dddd/script.sh"], "submit the job", tag="dddd")
    assert names(t) == ["sbatch"] + ["squeue"] * 5 and err.value.maybe_ran is True


def test_the_submit_command_runs_under_its_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([(0, "3350\n", "")], monkeypatch)
    out = b.run_checked(["sbatch", "--parsable", "/w/bbbb/script.sh"], "submit the job", tag="bbbb", marker=MARKER)
    assert t.calls == [submit_once_argv(MARKER, ["sbatch", "--parsable", "/w/bbbb/script.sh"])]
    assert out == Completed(["sbatch", "--parsable", "/w/bbbb/script.sh"], 0, "3350\n", "")  # as if run alone


def test_no_marker_after_a_drop_proves_it_never_started_so_it_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([lost(), (0, "3350\n", "")], monkeypatch)
    out = b.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER)
    assert out.stdout == "3350\n"
    assert names(t) == ["/bin/sh", "read_files", "/bin/sh"]
    assert t.calls[0] == t.calls[2] == submit_once_argv(MARKER, ["sbatch", "x"])  # the same marker: one copy runs


def test_a_recorded_outcome_is_used_and_nothing_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    record = {MARKER: b"", MARKER + ".out": b"3351\n", MARKER + ".err": b"", MARKER + ".rc": b"0\n"}
    b, t = make([lost()], monkeypatch, [record])
    out = b.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER)
    assert out == Completed(["sbatch", "x"], 0, "3351\n", "")
    assert names(t) == ["/bin/sh", "read_files"]
    # a recorded failure is the command's failure
    record = {MARKER: b"", MARKER + ".out": b"", MARKER + ".err": b"sbatch: error: invalid partition\n",
              MARKER + ".rc": b"1\n"}
    b, t = make([lost()], monkeypatch, [record])
    with pytest.raises(SchedulerError, match="could not submit the job") as err:
        b.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER)
    assert err.value.stderr == "sbatch: error: invalid partition\n" and err.value.argv == ["sbatch", "x"]


def test_started_but_unfinished_is_looked_up_by_tag_and_never_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([lost(), (0, "3338|(null)\n", ""), (0, SQUEUE, "")], monkeypatch, [{MARKER: b""}])
    out = b.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER)
    assert out.stdout == "3341\n"
    assert names(t) == ["/bin/sh", "read_files", "squeue", "read_files", "squeue"]
    # a record that shows up while looking wins too
    rec = {MARKER + ".out": b"3352\n", MARKER + ".rc": b"0\n"}
    b, t = make([lost(), (0, "", "")], monkeypatch, [{MARKER: b""}, rec])
    assert b.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER).stdout == "3352\n"
    assert names(t) == ["/bin/sh", "read_files", "squeue", "read_files"]


def test_started_and_never_seen_fails_saying_where_the_job_would_show(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([lost()] + [(0, "", "")] * 6, monkeypatch, [{MARKER: b""}])
    with pytest.raises(ConnectionLostError) as err:
        b.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER)
    assert err.value.maybe_ran is True  # the executor keeps the folder
    assert f"the command started ({MARKER} exists) but neither finished nor shows a job after 0 s, and it is not " \
           "submitted again (site 'rec'; the job, if submitted, carries the comment hpcbridge:bbbb: see " \
           "`squeue --me --format=%i|%k`)" in str(err.value)
    assert names(t).count("/bin/sh") == 1 and names(t).count("read_files") == 6


def test_a_resend_that_finds_the_marker_taken_waits_for_the_original(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = (ALREADY_STARTED, "", f"hpcbridge: {MARKER} exists: this submission was started before\n")
    rec = {MARKER: b"", MARKER + ".out": b"3353\n", MARKER + ".rc": b"0\n"}
    b, t = make([lost(), taken], monkeypatch, [{}, rec])
    assert b.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER).stdout == "3353\n"
    assert names(t) == ["/bin/sh", "read_files", "/bin/sh", "read_files"]


def test_a_timed_out_submission_with_a_marker_is_found_or_never_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    hung = CommandTimeoutError("command timed out after 120.0 s: sbatch --parsable /w/cc/script.sh")
    b, t = make([hung, (0, SQUEUE, "")], monkeypatch, [{MARKER: b""}])
    out = b.run_checked(["sbatch", "--parsable", "/w/cc/script.sh"], "submit the job", tag="cc", marker=MARKER)
    assert b.scheduler.parse_submit(out.stdout) == "3342"
    b, t = make([hung] + [(0, "", "")] * 6, monkeypatch, [{MARKER: b""}])
    with pytest.raises(CommandTimeoutError, match=r"timed out after 120.0 s.*it is not submitted again") as err:
        b.run_checked(["sbatch", "--parsable", "/w/cc/script.sh"], "submit the job", tag="cc", marker=MARKER)
    assert err.value.maybe_ran is True and names(t).count("sbatch") == 0 and names(t).count("/bin/sh") == 1


def test_when_the_record_cannot_be_read_the_error_says_where_to_look(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([lost()], monkeypatch, [ConnectionLostError("still down")])
    with pytest.raises(ConnectionLostError) as err:
        b.run_checked(["sbatch", "x"], "submit the job", tag="ffff", marker=MARKER)
    assert err.value.maybe_ran is True
    assert f"its record {MARKER} could not be read: still down" in str(err.value)
    assert "carries the comment hpcbridge:ffff: see `squeue --me --format=%i|%k`" in str(err.value)


def test_pbs_with_a_marker_waits_for_the_record_when_qstat_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    qstat = "Job Id: 1400.srv\n    Job_Name = x\n"  # the Slurm wrappers: no Output_Path, the lookup cannot tell
    rec = {MARKER + ".out": b"1401.srv\n", MARKER + ".rc": b"0\n"}
    b, t = make([lost(), (0, qstat, "")], monkeypatch, [{MARKER: b""}, rec], {"scheduler": "pbs", "flavour": "torque"})
    out = b.run_checked(["qsub", "x"], "submit the job", tag="bbbb", marker=MARKER)
    assert b.scheduler.parse_submit(out.stdout) == "1401.srv"
    assert names(t) == ["/bin/sh", "read_files", "qstat", "read_files"]


def test_without_a_tag_or_when_nothing_was_sent_the_error_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = make([lost()], monkeypatch)
    with pytest.raises(ConnectionLostError):
        b.run_checked(["scancel", "5"], "cancel the job")
    b, t = make([lost(maybe_ran=False)], monkeypatch)
    with pytest.raises(ConnectionLostError):
        b.run_checked(["sbatch", "x"], "submit the job", tag="eeee", marker=MARKER)
    assert len(t.calls) == 1


def test_when_the_lookup_fails_too_the_error_says_where_to_look(monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = make([lost(), lost(maybe_ran=False)], monkeypatch)
    with pytest.raises(ConnectionLostError) as err:
        b.run_checked(["sbatch", "x"], "submit the job", tag="ffff")
    assert err.value.maybe_ran is True
    assert "carries the comment hpcbridge:ffff: see `squeue --me --format=%i|%k`" in str(err.value)


def test_a_resend_that_cannot_go_out_is_an_unknown_outcome_not_a_plain_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """No marker after a drop: the command is sent again. If that copy cannot even go out (no reconnect), the
    original may still be starting on the login node: the outcome is unknown (the executor keeps the folder)."""
    for failure in (lost(maybe_ran=False), HostUnreachableError("cannot reach hpc at 10.0.0.1:22: no answer")):
        b, t = make([lost(), failure], monkeypatch)
        with pytest.raises(ConnectionLostError) as err:
            b.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER)
        assert err.value.maybe_ran is True and err.value.__cause__ is failure
        assert f"; sending it again failed: {failure} (site 'rec'; the job, if submitted, carries the comment " \
               "hpcbridge:bbbb" in str(err.value)
        assert names(t) == ["/bin/sh", "read_files", "/bin/sh"]


class Clock:
    """time.monotonic and time.sleep for the backend: fake seconds that pass when it sleeps or a command runs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_lookup_ends_at_its_deadline_however_long_each_look_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """~3 minutes of looking, not 39 looks: here every resend hangs until its timeout (the marker never shows, as
    on a stalled filesystem), which used to make the lookup last 39 x 120 s."""
    clock = Clock()
    b, t = make([lost()], monkeypatch)
    monkeypatch.setattr(submit_once, "FIND_BY_TAG_WAITS_S", (0.0, 1.0, 2.0, 3.0, 4.0) + (5.0,) * 34)
    timeouts: List[float] = []

    def hang(argv: List[str]) -> Step:
        timeouts.append(t.timeouts[-1] or submit_once.COMMAND_TIMEOUT_S)
        clock.now += timeouts[-1]
        return CommandTimeoutError(f"command on hpc timed out after {timeouts[-1]} s while trying to run /bin/sh")

    t.answers["/bin/sh"] = hang
    once = SubmitOnce(b.run, t.read_files, b.scheduler, "rec", clock=clock.monotonic, sleep=clock.sleep)
    started = clock.now
    with pytest.raises(CommandTimeoutError, match=r"it is not submitted again") as err:
        once.run_checked(["sbatch", "x"], "submit the job", tag="bbbb", marker=MARKER)
    assert err.value.maybe_ran is True
    assert clock.now - started <= 180 + 10 + 5  # the deadline, and at most the shortest timeout past it
    assert timeouts[0] == submit_once.COMMAND_TIMEOUT_S and timeouts[-1] < timeouts[0]  # the last got what was left
    assert names(t).count("/bin/sh") == 1 + len(timeouts) <= 4


def test_a_refused_submission_is_still_a_scheduler_error(monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = make([(1, "", "sbatch: error: invalid partition\n")], monkeypatch)
    with pytest.raises(SchedulerError, match="could not submit the job"):
        b.run_checked(["sbatch", "x"], "submit the job", tag="gggg", marker=MARKER)


def test_a_submission_the_controller_never_received_is_tried_again_under_a_new_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(submit_once, "SUBMIT_RETRY_WAITS_S", (0.0, 0.0))
    refused = (1, "", "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect "
                      "failure)\n")
    b, t = make([refused, (0, "77\n", "")], monkeypatch)
    assert b.run_checked(["sbatch", "x"], "submit the job", tag="gggg", marker=MARKER).stdout == "77\n"
    assert [c[4] for c in t.calls] == [MARKER, MARKER + ".1"]  # the first marker is used up


# -- the wrapper itself, run by a real /bin/sh --------------------------------------------------------------------
def fake_sbatch(tmp_path: Path, body: str) -> str:
    """An executable that counts its runs in tmp_path/runs, then runs ``body`` (sh)."""
    path = tmp_path / "fake-sbatch"
    path.write_text(f'#!/bin/sh\necho run >> "{tmp_path}/runs"\n{body}\n')
    path.chmod(0o755)
    return str(path)


def runs(tmp_path: Path) -> int:
    p = tmp_path / "runs"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_submit_once_runs_a_command_once_per_marker_and_records_it(tmp_path: Path) -> None:
    cmd = fake_sbatch(tmp_path, 'echo "Submitted $1"; echo "a warning" >&2; exit 0')
    marker = str(tmp_path / "submitted")
    p = subprocess.run(submit_once_argv(marker, [cmd, "x y"]), capture_output=True, text=True, timeout=30)
    assert (p.returncode, p.stdout, p.stderr) == (0, "Submitted x y\n", "a warning\n")
    record = {n: (tmp_path / n).read_text() for n in os.listdir(tmp_path) if n.startswith("submitted")}
    assert record == {"submitted": "", "submitted.out": "Submitted x y\n", "submitted.err": "a warning\n",
                      "submitted.rc": "0\n"}
    again = subprocess.run(submit_once_argv(marker, [cmd, "x y"]), capture_output=True, text=True, timeout=30)
    assert again.returncode == ALREADY_STARTED
    assert again.stderr == f"hpcbridge: {marker} exists: this submission was started before\n"
    assert runs(tmp_path) == 1


def test_submit_once_lets_exactly_one_of_racing_copies_run(tmp_path: Path) -> None:
    cmd = fake_sbatch(tmp_path, "sleep 0.2; echo 42")
    marker = str(tmp_path / "submitted")
    codes: List[int] = []

    def one() -> None:
        codes.append(subprocess.run(submit_once_argv(marker, [cmd]), capture_output=True, timeout=30).returncode)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(codes) == [0] + [ALREADY_STARTED] * 7 and runs(tmp_path) == 1


def test_submit_once_through_the_local_transport(tmp_path: Path) -> None:
    b = Backend(site_from_mapping("loc", {"scheduler": "slurm", "workdir": str(tmp_path)}))
    cmd = fake_sbatch(tmp_path, "echo 4242; exit 0")
    out = b.run_checked([cmd, "--parsable"], "submit the job", tag="t1", marker=str(tmp_path / "submitted"))
    assert out == Completed([cmd, "--parsable"], 0, "4242\n", "")
    with pytest.raises(TransportError, match=r"command not found on the cluster side of site 'loc': "
                                             r"'no-such-sbatch-here' \(is it installed"):
        b.run_checked(["no-such-sbatch-here"], "submit the job", tag="t2", marker=str(tmp_path / "m2"))
    assert not (tmp_path / "m2").exists()  # nothing ran, nothing is left
    failing = fake_sbatch(tmp_path, "echo 'sbatch: error: no such partition' >&2; exit 1")
    with pytest.raises(SchedulerError) as err:
        b.run_checked([failing], "submit the job", tag="t3", marker=str(tmp_path / "m3"))
    assert err.value.exit_code == 1 and err.value.stderr == "sbatch: error: no such partition\n"
    assert err.value.argv == [failing]


def test_a_marker_that_cannot_be_created_says_why(tmp_path: Path) -> None:
    """The shell's reason (here: the job folder is gone) reaches the error, not a bare exit code 125."""
    b = Backend(site_from_mapping("loc", {"scheduler": "slurm", "workdir": str(tmp_path)}))
    cmd = fake_sbatch(tmp_path, "echo 4242")
    marker = str(tmp_path / "gone" / "submitted")
    with pytest.raises(SchedulerError) as err:
        b.run_checked([cmd, "--parsable"], "submit the job", tag="t4", marker=marker)
    reason = "Directory nonexistent" if os.path.realpath("/bin/sh").endswith("dash") else "No such file or directory"
    assert err.value.message == (
        f"could not submit the job on site 'loc': cannot create {marker}: {reason}, so nothing was submitted (is the "
        "job folder writable, and its filesystem neither read-only nor over quota?)"
    )
    assert err.value.exit_code == 125 and err.value.stderr == f"hpcbridge: cannot create {marker}: {reason}\n"
    assert runs(tmp_path) == 0


def test_on_the_local_transport_a_hung_submission_is_killed_and_its_outcome_told_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the login node (or the local site) a submit command that times out is killed with everything it started
    (SUBMIT_ONCE's /bin/sh, the submit command, its children): nothing goes on untracked, and no record can come
    any more, so there is no waiting for one. The local site cannot look jobs up by tag: the error stands at once."""
    monkeypatch.setattr(submit_once, "COMMAND_TIMEOUT_S", 1.0)
    monkeypatch.setattr(submit_once, "FIND_BY_TAG_WAITS_S", (0.5,) * 10)
    late = tmp_path / "late"
    cmd = fake_sbatch(tmp_path, f"(sleep 2; touch {late}) & sleep 60")
    b = Backend(site_from_mapping("loc", {"scheduler": "local", "workdir": str(tmp_path)}))
    marker = str(tmp_path / "submitted")
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as err:
        b.run_checked([cmd], "submit the job", tag="t5", marker=marker)
    assert time.monotonic() - started < 3
    assert err.value.maybe_ran is True
    assert str(err.value).endswith(
        f"; {marker} exists but its command was killed before it recorded an outcome, and it is not submitted again "
        "(site 'loc'; the job, if submitted, carries the tag hpcbridge:t5)"
    )
    time.sleep(2.5)
    assert not late.exists() and runs(tmp_path) == 1


def test_ctrl_c_once_the_submission_is_under_way_keeps_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C during the submit command or the lookup after a drop: the job may exist (or a late original may still
    submit it), so its folder stays; an error that says nothing was submitted removes it."""
    from hpcbridge import Executor

    jobs = tmp_path / "jobs"
    ex = Executor(site=site_from_mapping("loc", {"scheduler": "local", "workdir": str(jobs), "python": sys.executable}))

    def interrupted(*args: Any, **kw: Any) -> Completed:
        assert [p.name for p in jobs.iterdir()][0]  # the folder is there while it submits
        raise KeyboardInterrupt

    monkeypatch.setattr(ex._backend, "run_checked", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.submit(pow, 2, 3)
    kept = list(jobs.iterdir())
    assert len(kept) == 1 and (kept[0] / "script.sh").exists()
    assert f"interrupted while submitting; the job may have been submitted, so its folder {kept[0]} is kept (the " \
           f"job, if submitted, carries the tag hpcbridge:{kept[0].name})" in caplog.text

    def refused(*args: Any, **kw: Any) -> Completed:
        raise SchedulerError("could not submit the job on site 'loc'")

    monkeypatch.setattr(ex._backend, "run_checked", refused)
    with pytest.raises(SchedulerError):
        ex.submit(pow, 2, 3)
    assert list(jobs.iterdir()) == kept
