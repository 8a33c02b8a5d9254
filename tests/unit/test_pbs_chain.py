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
    started = build([parse("TIMEOUT 100 101 43 node1 90.5")], "done")[0]
    assert started.start == time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(90.5))
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


def test_a_failed_delete_of_a_link_that_just_handed_over_cancels_its_follow_up():
    """qdel of the live link fails because it ended by handing over a moment ago: the follow-up its note names is
    what is cancelled, and the job is CANCELLED."""
    fc = FakeChain()
    ex = Executor(site=_site("torque"), requeue=3, walltime="00:01:00", signal_grace_s=20, transport=fc.t)
    fc.running.append("42")
    job = ex.submit(square, 7)
    _wait(lambda: "42" in fc.asked)

    def qdel(argv: List[str]):
        if argv[1:] == ["42"]:
            _note(fc, job, 0, "TIMEOUT 1000.0 1001.0 43 node1\n")
            return (1, "", "qdel: Unknown Job Id 42")
        fc.deleted.append(argv[1:])
        return (0, "", "")

    fc.t.answers["qdel"] = qdel
    assert job.cancel()
    assert fc.deleted == [["43"]]
    assert job.state is JobState.CANCELLED


def test_a_failed_cancel_takes_the_mark_back_and_the_job_goes_on():
    """qdel fails and no follow-up exists: the error reaches the caller, and the folder's cancel mark is removed
    (a later warning must still hand over, as for a job never cancelled)."""
    from hpcbridge.errors import SchedulerError

    fc = FakeChain()
    ex = Executor(site=_site("torque"), requeue=3, walltime="00:01:00", signal_grace_s=20, transport=fc.t)
    fc.running.append("42")
    job = ex.submit(square, 7)
    _wait(lambda: "42" in fc.asked)
    mark = JobFolder(job._submission.folder).requeue_cancelled
    marked = []

    def qdel(argv: List[str]):
        marked.append(mark in fc.t.files)
        return (1, "", "qdel: Server could not connect to MOM 42")

    fc.t.answers["qdel"] = qdel
    fc.t.answers["rm"] = lambda argv: (fc.t.files.pop(argv[-1], None), (0, "", ""))[1]
    with pytest.raises(SchedulerError, match="Server could not connect to MOM"):
        job.cancel()
    assert marked == [True] and mark not in fc.t.files  # marked before the delete, taken back after it failed
    assert not job.done() and job._submission.cancelling is False


def test_status_finds_each_jobs_newest_link_in_its_folder():
    t = ScriptedTransport()
    t.files["/w/a/ckpt/0.run0"] = b"TIMEOUT 1 2 43 node1\n"
    t.files["/w/a/ckpt/0.run1"] = b"TIMEOUT 3 4 44 node2\n"
    t.files["/w/b/ckpt/0.run0"] = b"TIMEOUT 1 - - node1\n"  # warned, not continued
    assert live_links(t, [("42", "/w/a"), ("50", "/w/b"), ("60", "/w/c")]) == {"42": "44", "50": "50", "60": "60"}


# -- the script's requeue lines, run in a real bash with a stand-in worker and qsub ----------------------------------
FAKE_WORKER = """#!/bin/bash
# the worker: waits for the warning (USR2), saves (the marker), leaves to be requeued (75)
echo "$HPCBRIDGE_RESTART" >> {folder}/restarts
trap 'mkdir -p {folder}/ckpt; echo saved > {folder}/ckpt/0.saved
[ -z "$CANCEL_ON_WARN" ] || touch {folder}/ckpt/cancelled; exit 75' USR2
for i in $(seq 100); do sleep 0.1; done
exit 9
"""

FAKE_QSUB = """#!/bin/bash
printf '%s\\n' "$@" > {folder}/qsub.argv
env | cut -d= -f1 | sort > {folder}/qsub.env
echo 4243
"""


def _run_requeue_script(tmp_path, requeue: int, job_id: str = "4242", **extra_env: str):
    import os
    import signal
    import subprocess

    folder = tmp_path / "job"
    (folder / "log").mkdir(parents=True, exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", FAKE_WORKER), ("qsub", FAKE_QSUB)):
        (bin_dir / name).write_text(text.format(folder=folder))
        (bin_dir / name).chmod(0o755)
    site = _site("torque", python=str(bin_dir / "python"))
    # walltime 60 s, warned 58 s before: the shell's own timer warns the worker 2 s after the start
    text = Executor(site=site, walltime="00:01:00", requeue=requeue, signal_grace_s=58)._render_script(
        str(folder), TAG, None, square, 1)
    (folder / "script.sh").write_text(text)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": job_id, "SLURM_CONF": "/etc/slurm/slurm.conf",
           "SBATCH_PARTITION": "wrong", "SLURM_MEM_PER_NODE": "100", "HPCBRIDGE_DEADLINE": "1", **extra_env}
    proc = subprocess.Popen(["bash", str(folder / "script.sh")], env=env, cwd=tmp_path, start_new_session=True)
    try:
        code = proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the script's background timers
        except ProcessLookupError:
            pass
    return folder, code


def test_the_warned_script_submits_itself_after_this_job_from_a_scrubbed_environment(tmp_path):
    folder, code = _run_requeue_script(tmp_path, requeue=1)
    assert code == 75, (folder / "log" / "0.err").read_text()
    assert (folder / "qsub.argv").read_text().split("\n")[:-1] == [
        "-W", "depend=afterany:4242", "-j", "oe", "-o", f"{folder}/log/pbs.out", f"{folder}/script.sh"]
    seen = set((folder / "qsub.env").read_text().split())
    assert "SLURM_CONF" in seen and not seen & {"SLURM_JOB_ID", "SBATCH_PARTITION", "SLURM_MEM_PER_NODE",
                                                   "HPCBRIDGE_DEADLINE", "HPCBRIDGE_RESTART", "HPCBRIDGE_TASK"}
    note = parse((folder / "ckpt" / "0.run0").read_text())
    assert (note.reason, note.next_id) == ("TIMEOUT", "4243") and note.requeued_at is not None
    assert "warned (TIMEOUT): run 1 continues as job 4243 (run 2)" in (folder / "log" / "0.err").read_text()
    # the follow-up (the same script, job 4243) is run 1: warned again, requeue=1 used up, no further job
    (folder / "qsub.argv").unlink()
    folder, code = _run_requeue_script(tmp_path, requeue=1, job_id="4243")
    assert code == 75 and not (folder / "qsub.argv").exists()
    assert (folder / "restarts").read_text().split() == ["0", "1"]
    last = parse((folder / "ckpt" / "0.run1").read_text())
    assert (last.reason, last.next_id) == ("TIMEOUT", "")
    assert "not requeued: requeue=1 restarts used" in (folder / "log" / "0.err").read_text()


def test_a_job_cancelled_while_it_runs_submits_no_follow_up(tmp_path):
    folder, code = _run_requeue_script(tmp_path, requeue=2, CANCEL_ON_WARN="1")  # marked as the warning came
    assert code == 75 and not (folder / "qsub.argv").exists()
    note = parse((folder / "ckpt" / "0.run0").read_text())
    assert (note.next_id, note.reason) == ("", "CANCELLED")  # the client that follows the chain reads CANCELLED
    assert "not requeued: the job was cancelled" in (folder / "log" / "0.err").read_text()


def test_a_follow_up_of_a_cancelled_job_does_not_run_the_call(tmp_path):
    """A follow-up the cancel could not reach (submitted as the cancel came) leaves at its start."""
    (tmp_path / "job" / "ckpt").mkdir(parents=True)
    (tmp_path / "job" / "ckpt" / "0.run0").write_text("TIMEOUT 1 2 4243 node1 0\n")
    (tmp_path / "job" / "ckpt" / "cancelled").write_text("cancelled\n")
    folder, code = _run_requeue_script(tmp_path, requeue=2, job_id="4243")
    assert code == 0 and not (folder / "restarts").exists() and not (folder / "qsub.argv").exists()
    note = parse((folder / "ckpt" / "0.run1").read_text())
    assert (note.reason, note.next_id) == ("CANCELLED", "")
    assert "run 2 of job 4243 not started: the job was cancelled" in (folder / "log" / "0.err").read_text()


def test_a_rerun_of_a_link_that_handed_over_does_nothing(tmp_path):
    """-r y: the server may requeue a job after the SIGTERM that warned it, once it handed over to job 4243: its
    rerun (job 4242 again) must not run the call a second time beside the follow-up."""
    (tmp_path / "job" / "ckpt").mkdir(parents=True)
    (tmp_path / "job" / "ckpt" / "0.run0").write_text("PREEMPTED 1 2 4243 node1 0\n")
    folder, code = _run_requeue_script(tmp_path, requeue=2, job_id="4242")
    assert code == 0 and not (folder / "restarts").exists() and not (folder / "qsub.argv").exists()
    assert not (folder / "ckpt" / "0.run1").exists()  # the follow-up's run number stays free
    assert "job 4242 already continues as job 4243: this rerun does nothing" in (folder / "log" / "0.err").read_text()
