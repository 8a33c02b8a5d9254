"""Exactly-once submission after a dropped connection: the backend's decisions (pure logic, a scripted transport).

The live version (a real sshd killed while sbatch is in flight) is tests/live/test_ssh_live.py.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import pytest

from hpcbridge import backend as backend_mod
from hpcbridge.backend import Backend
from hpcbridge.errors import CommandTimeoutError, ConnectionLostError, SchedulerError
from hpcbridge.schedulers.slurm import SlurmScheduler
from hpcbridge.sites import site_from_mapping
from hpcbridge.transport.base import Completed

SQUEUE = "3338|(null)\n3340_[0-49]|hpcbridge:aaaa\n3341_7|hpcbridge:bbbb\n3341_8|hpcbridge:bbbb\n3342|hpcbridge:cc\n"
Step = Union[BaseException, Tuple[int, str, str]]


class Scripted:
    """Each run() takes the next step: an exception to raise, or (exit code, stdout, stderr)."""

    name = "scripted"

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        self.calls: List[List[str]] = []

    def run(self, argv: Sequence[str], **kw: Any) -> Completed:
        self.calls.append(list(argv))
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        code, out, err = step
        return Completed(list(argv), code, out, err)

    def expanduser(self, path: str) -> str:
        return path


def make(steps: Sequence[Step], monkeypatch: pytest.MonkeyPatch) -> Tuple[Backend, Scripted]:
    monkeypatch.setattr(backend_mod, "FIND_BY_TAG_WAITS_S", (0.0, 0.0, 0.0))
    b = Backend(site_from_mapping("rec", {"scheduler": "slurm", "workdir": "/w"}))
    t = Scripted(steps)
    b.transport = t  # type: ignore[assignment]
    return b, t


def lost(maybe_ran: bool = True) -> ConnectionLostError:
    return ConnectionLostError("the SSH connection to hpc dropped while trying to run sbatch", maybe_ran=maybe_ran)


def test_parse_find_by_tag() -> None:
    s = SlurmScheduler()
    assert s.find_by_tag_argv("aaaa") == ["squeue", "--me", "--noheader", "--states=all", "--format=%i|%k"]
    assert s.parse_find_by_tag(SQUEUE, "aaaa") == "3340"  # a pending array
    assert s.parse_find_by_tag(SQUEUE, "bbbb") == "3341"  # array tasks
    assert s.parse_find_by_tag(SQUEUE, "cc") == "3342"
    assert s.parse_find_by_tag(SQUEUE, "c") is None  # whole comment only
    assert s.parse_find_by_tag("", "aaaa") is None


def test_a_job_found_by_its_tag_is_not_submitted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([lost(), (0, "3338|(null)\n", ""), (0, SQUEUE, "")], monkeypatch)
    out = b.run_checked(["sbatch", "--parsable", "/w/bbbb/script.sh"], "submit the job", tag="bbbb")
    assert b.scheduler.parse_submit(out.stdout) == "3341"
    assert [c[0] for c in t.calls] == ["sbatch", "squeue", "squeue"]  # the second look found the in-flight job


def test_no_job_with_the_tag_means_it_never_ran_so_it_is_submitted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    b, t = make([lost(), (0, "", ""), (0, "", ""), (0, "", ""), (0, "3350\n", "")], monkeypatch)
    out = b.run_checked(["sbatch", "--parsable", "/w/dddd/script.sh"], "submit the job", tag="dddd")
    assert out.stdout == "3350\n"
    assert [c[0] for c in t.calls] == ["sbatch", "squeue", "squeue", "squeue", "sbatch"]


def test_without_a_tag_or_when_nothing_was_sent_the_error_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = make([lost()], monkeypatch)
    with pytest.raises(ConnectionLostError):
        b.run_checked(["scancel", "5"], "cancel the job")
    b, t = make([lost(maybe_ran=False)], monkeypatch)
    with pytest.raises(ConnectionLostError):
        b.run_checked(["sbatch", "x"], "submit the job", tag="eeee")
    assert len(t.calls) == 1


def test_when_the_lookup_fails_too_the_error_says_where_to_look(monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = make([lost(), lost(maybe_ran=False)], monkeypatch)
    with pytest.raises(ConnectionLostError) as err:
        b.run_checked(["sbatch", "x"], "submit the job", tag="ffff")
    assert err.value.maybe_ran is True
    assert "carries the comment hpcbridge:ffff: see `squeue --me --format=%i|%k`" in str(err.value)


def test_a_refused_submission_is_still_a_scheduler_error(monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = make([(1, "", "sbatch: error: invalid partition\n")], monkeypatch)
    with pytest.raises(SchedulerError, match="could not submit the job"):
        b.run_checked(["sbatch", "x"], "submit the job", tag="gggg")


def test_a_submission_that_timed_out_is_looked_up_too(monkeypatch: pytest.MonkeyPatch) -> None:
    hung = CommandTimeoutError("command timed out after 120.0 s: sbatch --parsable /w/cc/script.sh")
    b, t = make([hung, (0, SQUEUE, "")], monkeypatch)
    out = b.run_checked(["sbatch", "--parsable", "/w/cc/script.sh"], "submit the job", tag="cc")
    assert b.scheduler.parse_submit(out.stdout) == "3342"
    assert [c[0] for c in t.calls] == ["sbatch", "squeue"]
    b, _ = make([hung, CommandTimeoutError("command timed out after 60 s: squeue")], monkeypatch)
    with pytest.raises(CommandTimeoutError, match="the job, if submitted, carries the comment hpcbridge:cc") as err:
        b.run_checked(["sbatch", "--parsable", "/w/cc/script.sh"], "submit the job", tag="cc")
    assert err.value.maybe_ran is True  # so the executor keeps the job's folder


def test_a_timed_out_submission_that_is_not_found_is_never_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    hung = CommandTimeoutError("command timed out after 120.0 s: sbatch --parsable /w/hh/script.sh")
    b, t = make([hung, (0, "", ""), (0, "", ""), (0, "", "")], monkeypatch)
    with pytest.raises(CommandTimeoutError, match=r"no job carries the tag hpcbridge:hh yet, and it is not submitted "
                                                  r"again in case the hung command still does") as err:
        b.run_checked(["sbatch", "--parsable", "/w/hh/script.sh"], "submit the job", tag="hh")
    assert [c[0] for c in t.calls] == ["sbatch", "squeue", "squeue", "squeue"]  # looked three times, sent once
    assert "see `squeue --me --format=%i|%k`" in str(err.value) and err.value.maybe_ran is True
