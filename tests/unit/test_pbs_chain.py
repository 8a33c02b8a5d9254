"""Requeue on PBS (docs/requeue.md): the rendered script's requeue lines (golden, both flavours), the refusals, and
the client's following of a chain of follow-up jobs (pure logic, on a scripted transport: no cluster here; the live
proof is tests/live/test_pbs_requeue_live.py)."""

from __future__ import annotations

import time
from typing import Dict, List

import pytest

from hpcbridge import Executor, JobState
from hpcbridge.chain import build, live_links, parse
from hpcbridge.errors import JobTimeoutError, ResourceError
from hpcbridge.sites import site_from_mapping
from hpcbridge.store import JobFolder
from hpcbridge.testing import ScriptedTransport, this_python

TAG = "0123456789abcdef"
FOLDER = f"/scratch/alice/hpcb/{TAG}"


def _site(flavour: str, **over):
    data = {
        "scheduler": "pbs",
        "flavour": flavour,
        "python": "/opt/py/bin/python",
        "workdir": "/scratch/alice/hpcb",
        "defaults": {"walltime": "00:10:00"},
        "poll_interval_min_s": 0.05,
        "poll_interval_max_s": 0.05,
        "result_grace_s": 0.2,
    }
    data.update(over)
    return site_from_mapping(f"golden-{flavour}", data)


def square(x):
    return x * x


@pytest.mark.parametrize("flavour, name", [("torque", "pbs_torque_requeue.sh"), ("pbspro", "pbs_pro_requeue.sh")])
def test_requeue_on_renders_the_timer_and_the_follow_up_job(fixed, golden, flavour, name):
    ex = Executor(site=_site(flavour), walltime="01:00:00", requeue=2, signal_grace_s=120)
    golden(name, ex._render_script(FOLDER, TAG, None, square, 1))


def test_requeue_with_an_array_is_refused_on_pbs_before_anything_is_submitted():
    t = ScriptedTransport(answers={"/opt/py/bin/python": this_python()})
    ex = Executor(site=_site("torque"), requeue=1, transport=t)
    with pytest.raises(ResourceError, match=r"^requeue=1 with map\(\) \(an array of 3 tasks\): on PBS a warned run "
                       r"continues in a follow-up job, which hpcbridge makes for plain jobs only; submit the calls one "
                       r"by one \(submit\(\)\), or use requeue=0 for the map$"):
        ex.map(square, [1, 2, 3])
    assert "qsub" not in t.programs()


@pytest.mark.parametrize(
    "text, reason, next_id, host",
    [
        ("TIMEOUT 100.5 101.25 4243.srv node1\n", "TIMEOUT", "4243.srv", "node1"),
        ("PREEMPTED 100.5 - - node2\n", "PREEMPTED", "", "node2"),
    ],
)
def test_a_runs_note_names_its_follow_up(text, reason, next_id, host):
    note = parse(text)
    assert (note.reason, note.next_id, note.host, note.warned_at) == (reason, next_id, host, 100.5)


def test_attempts_one_per_link():
    notes = [parse("TIMEOUT 100 101 43 node1"), parse("TIMEOUT 200 201 44 node2")]
    assert [(a.nodes, a.ended) for a in build(notes, "done", "node3")] == [
        ("node1", "TIMEOUT"), ("node2", "TIMEOUT"), ("node3", "done")]
    # the last link ended warned and was not continued: its note is the last attempt
    used = [parse("TIMEOUT 100 101 43 node1"), parse("TIMEOUT 200 - - node2")]
    assert [a.ended for a in build(used, "FAILED")] == ["TIMEOUT", "TIMEOUT"]


# -- the poller follows the chain --------------------------------------------------------------------------------
RUNNING = "Job Id:\t{id}\n\tJob_Name = hpcb-square\n\tjob_state = R\n\texec_host = node1/1\n"


class FakeChain:
    """qsub prints 42; qstat answers for the ids in ``running`` and says the others are unknown (gone, ended)."""

    def __init__(self) -> None:
        self.running: List[str] = []
        self.asked: List[str] = []
        self.deleted: List[List[str]] = []
        self.t = ScriptedTransport(answers={"qsub": (0, "42\n", ""), "qstat": self.qstat, "qdel": self.qdel,
                                            "/opt/py/bin/python": this_python()})

    def qstat(self, argv: List[str]):
        ids = [a for a in argv[1:] if not a.startswith("-")]
        self.asked.extend(ids)
        live = [i for i in ids if i in self.running]
        if not live:
            return (153, "", "")
        return (0, "\n".join(RUNNING.format(id=i) for i in live), "")

    def qdel(self, argv: List[str]):
        self.deleted.append(argv[1:])
        return (0, "", "")


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _note(fc: FakeChain, job, run: int, text: str) -> None:
    fc.t.files[JobFolder(job._submission.folder).run_note(0, run)] = text.encode()


def test_the_poller_follows_the_follow_up_job_and_the_future_resolves_once():
    fc = FakeChain()
    ex = Executor(site=_site("torque"), requeue=2, walltime="00:01:00", signal_grace_s=20, transport=fc.t)
    fc.running.append("42")
    job = ex.submit(square, 7)
    assert job.job_id == "42" and "#PBS -r y" in fc.t.script_of(job)
    _wait(lambda: "42" in fc.asked)
    # run 1 is warned and hands over to job 43, then ends: the poller asks about 43 from then on
    _note(fc, job, 0, "TIMEOUT 1000.0 1001.0 43 node1\n")
    fc.running[:] = ["43"]
    _wait(lambda: "43" in fc.asked)
    assert job.job_id == "42" and not job.done() and job._submission.follow_ups == ["43"]
    fc.t.complete(job, 49)
    assert job.result(timeout=10) == 49
    assert [(a.nodes, a.ended) for a in job.attempts] == [("node1", "TIMEOUT"), ("node1", "done")]


def test_a_chain_that_used_up_its_requeues_fails_with_the_timeout_naming_every_run():
    fc = FakeChain()
    ex = Executor(site=_site("torque"), requeue=1, walltime="00:01:00", signal_grace_s=20, transport=fc.t)
    fc.running.append("42")
    job = ex.submit(square, 7)
    _wait(lambda: "42" in fc.asked)
    _note(fc, job, 0, "TIMEOUT 1000.0 1001.0 43 node1\n")
    _note(fc, job, 1, "TIMEOUT 2000.0 - - node2\n")
    fc.running.clear()  # both end
    with pytest.raises(JobTimeoutError, match=r"^job 42 hit its walltime \(state TIMEOUT \(warned; not continued by "
                       r"a follow-up job\)\); it ran 2 times, requeue used up: run 1: node1 \S+ - \S+ TIMEOUT; "
                       r"run 2: node2 \S+ - \S+ TIMEOUT$"):
        job.result(timeout=10)
    assert job.state is JobState.TIMEOUT and "43" in fc.asked


def test_cancel_marks_the_folder_cancels_the_live_link_and_a_follow_up_it_already_submitted():
    fc = FakeChain()
    ex = Executor(site=_site("torque"), requeue=3, walltime="00:01:00", signal_grace_s=20, transport=fc.t)
    fc.running.append("42")
    job = ex.submit(square, 7)
    _wait(lambda: "42" in fc.asked)
    _note(fc, job, 0, "TIMEOUT 1000.0 1001.0 43 node1\n")
    fc.running[:] = ["43"]
    _wait(lambda: "43" in fc.asked)

    deleted: Dict[str, bool] = {}

    def qdel(argv: List[str]):
        # the run being cancelled had just submitted job 44 (its note names it) when the cancel came
        deleted["marked"] = JobFolder(job._submission.folder).requeue_cancelled in fc.t.files
        _note(fc, job, 1, "PREEMPTED 2000.0 2001.0 44 node2\n")
        fc.deleted.append(argv[1:])
        return (0, "", "")

    fc.t.answers["qdel"] = qdel
    assert job.cancel()
    assert deleted == {"marked": True}  # the mark came first: a shell warned by the cancel submits nothing
    assert fc.deleted == [["43"], ["44"]]
    assert job.state is JobState.CANCELLED


def test_status_finds_each_jobs_newest_link_in_its_folder():
    t = ScriptedTransport()
    t.files["/w/a/ckpt/0.run0"] = b"TIMEOUT 1 2 43 node1\n"
    t.files["/w/a/ckpt/0.run1"] = b"TIMEOUT 3 4 44 node2\n"
    t.files["/w/b/ckpt/0.run0"] = b"TIMEOUT 1 - - node1\n"  # warned, not continued
    assert live_links(t, [("42", "/w/a"), ("50", "/w/b"), ("60", "/w/c")]) == {"42": "44", "50": "50", "60": "60"}
