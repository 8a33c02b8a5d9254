"""Requeue on a PBS site (docs/requeue.md, docs/pbs.md): a warned run continues in a follow-up job, live.

Site "testcluster-pbs" (the Torque-compatible qsub/qstat/qdel of slurm-wlm-torque over the test cluster's Slurm).
PBS has no ``--signal``: the batch shell's own timer warns the call ``signal_grace_s`` before its walltime; the shell
then submits the same script again with ``qsub -W depend=afterany:<its id>`` (from inside the job), and the client
follows the chain. The three jobs are submitted together by one module fixture and waited on together: 1-minute
walltimes (the wrappers' walltime is whole minutes), warned 25 s before the end; the module takes about as long as
its longest chain (two or three runs of about 35 s and the dependency's start in between).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpcbridge import Executor, JobState, load_site
from hpcbridge.errors import JobTimeoutError

pytestmark = pytest.mark.live

CHECKOUT = Path(__file__).resolve().parents[2]
WALLTIME = "00:01:00"
GRACE = 25


def train(steps: int, every: int, step_s: float, log: str) -> int:
    """A training-like loop: ``steps`` steps, a checkpoint every ``every`` and when warned; each step computed is
    logged (``RUN STEP``)."""
    import hpcbridge
    from hpcbridge import checkpoint

    run = int(os.environ.get("HPCBRIDGE_RESTART", "0"))
    state = checkpoint.load(default={"step": 0, "total": 0})
    for step in range(state["step"], steps):
        time.sleep(step_s)
        state = {"step": step + 1, "total": state["total"] + step * step}
        with open(log, "a") as fh:
            fh.write(f"{run} {step}\n")
        if (step + 1) % every == 0 or hpcbridge.should_stop():
            checkpoint.save(state)
    return int(state["total"])


def expected(steps: int) -> int:
    return sum(step * step for step in range(steps))


def runs_logged(log: Path) -> list[int]:
    return sorted({int(line.split()[0]) for line in log.read_text().splitlines()})


@pytest.fixture(scope="module")
def chains(cluster: Any, _cluster_session_dir: Path) -> dict[str, Any]:
    """(a) 45 steps of 1 s: two runs; (b) requeue=1 and 120 steps: would need three runs; (c) a long loop cancelled
    while its second run waits or runs; the same cancelled by `hpcbridge cancel` in another process."""
    d = _cluster_session_dir / "pbs-requeue"
    d.mkdir()
    old = os.getcwd()
    os.chdir(d)  # where the wrapper's qsub would drop <name>.o<id> files
    try:
        site = load_site("testcluster-pbs", templates=[str(CHECKOUT / "templates")])

        def ex(name: str, requeue: int) -> Executor:
            return Executor(site=site, folder=str(d / name), requeue=requeue, signal_grace_s=GRACE, walltime=WALLTIME)

        jobs: dict[str, Any] = {"dir": d}
        jobs["two"] = ex("two", 2).submit(train, 45, 5, 1.0, str(d / "log-two"))
        jobs["used_up"] = ex("used_up", 1).submit(train, 120, 5, 1.0, str(d / "log-used-up"))
        jobs["cancel"] = ex("cancel", 2).submit(train, 400, 5, 1.0, str(d / "log-cancel"))
        jobs["cli_cancel"] = ex("cli_cancel", 5).submit(train, 400, 5, 1.0, str(d / "log-cli-cancel"))
    finally:
        os.chdir(old)
    return jobs


def test_cancel_during_a_chained_run_leaves_no_follow_up_behind(chains, cluster):
    """(c), first in the module (its chain must still be on its second run): while the second run of the chain runs,
    `hpcbridge status` says RUNNING; job.cancel() then: both ends of the chain leave the queue, and no third run is
    submitted."""
    d, job = chains["dir"], chains["cancel"]
    deadline = time.monotonic() + 240
    while not job._submission.follow_ups:  # the poller followed the chain to the second run
        assert time.monotonic() < deadline, "the first run was not continued within 240 s"
        time.sleep(0.5)
    second = job._submission.follow_ups[0]
    while (state := cluster.sacct(second).get("State", "")) != "RUNNING":
        assert time.monotonic() < deadline and state in ("", "PENDING"), f"the follow-up {second} is {state!r}"
        time.sleep(0.5)
    # hpcbridge status in another process follows the chain too: the first run ended (exit 75), the second runs
    home = os.path.dirname(job._submission.backend.registry.path)  # where the submission was recorded
    out = subprocess.run([sys.executable, "-m", "hpcbridge.cli", "status", "--site", "testcluster-pbs", "--json",
                          "-n", "500"], capture_output=True, text=True, timeout=120, cwd=d,
                         env={**os.environ, "HPCBRIDGE_HOME": home})
    assert out.returncode == 0, out.stderr
    assert [r["state"] for r in json.loads(out.stdout) if r["job_id"] == job.job_id] == ["RUNNING"]
    assert job.cancel()
    assert job.state is JobState.CANCELLED
    assert cluster.wait_job(second).state == "CANCELLED"
    time.sleep(3)  # a follow-up the cancelled run might have submitted would be in the queue by now
    note = Path(job._submission.paths.run_note(0, 1))  # the second run's note: it names no follow-up
    assert not note.exists() or note.read_text().split()[3] == "-", note.read_text()
    assert runs_logged(d / "log-cancel") == [0, 1]
    assert not {job.job_id, second} & cluster.squeue_ids()


def test_hpcbridge_cancel_of_the_first_id_stops_a_chain_that_moved_on(chains, cluster):
    """`hpcbridge cancel FIRST_ID` (another process, as a user types it) once the chain runs under a follow-up's id:
    the newest link is cancelled, no further link is submitted, nothing of the chain is left in the queue."""
    d, job = chains["dir"], chains["cli_cancel"]
    deadline = time.monotonic() + 240
    while not job._submission.follow_ups:
        assert time.monotonic() < deadline, "the first run was not continued within 240 s"
        time.sleep(0.5)
    home = os.path.dirname(job._submission.backend.registry.path)
    out = subprocess.run([sys.executable, "-m", "hpcbridge.cli", "cancel", "--site", "testcluster-pbs", job.job_id],
                         capture_output=True, text=True, timeout=120, cwd=d, env={**os.environ, "HPCBRIDGE_HOME": home})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [job.job_id]  # not a terminal: the ids cancelled, one per line
    while not job.done():  # this process's poller follows the chain to its cancelled link
        assert time.monotonic() < deadline, f"{job.job_id} still {job.state} after the cancel"
        time.sleep(0.5)
    assert job.state is JobState.CANCELLED
    time.sleep(3)  # a follow-up the cancelled run might have submitted would be in the queue by now
    links = [job.job_id]
    for run in range(8):  # the chain as the runs' notes name it
        note = Path(job._submission.paths.run_note(0, run))
        if not note.exists() or note.read_text().split()[3] == "-":
            break
        links.append(note.read_text().split()[3])
    assert len(links) >= 2, links
    assert cluster.wait_job(links[-1]).state == "CANCELLED", links
    assert not set(links) & cluster.squeue_ids()


def test_a_walltime_shorter_than_the_work_continues_in_a_follow_up_job(chains, cluster):
    """(a): warned by the shell's timer, saved, a follow-up job submitted with afterany, resumed: the uninterrupted
    value, two runs (TIMEOUT, done), nothing left in the queue."""
    d, job = chains["dir"], chains["two"]
    assert job.result(timeout=300) == expected(45)
    assert [a.ended for a in job.attempts] == ["TIMEOUT", "done"], job.attempts
    assert job.attempts[0].warned_at is not None and job.attempts[0].requeued_at is not None
    first = job.attempts[0]
    assert first.nodes.startswith("node") and first.start < first.end, first  # both ISO times from the run's note
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", t) for t in (first.start, first.end)), first
    follow_up = job._submission.follow_ups[0]
    assert follow_up != job.job_id and job.job_id == job._submission.job_id  # the user keeps the first id
    assert runs_logged(d / "log-two") == [0, 1]
    steps = [line.split()[1] for line in (d / "log-two").read_text().splitlines()]
    assert len(steps) == len(set(steps)) == 45  # the second run started where the first saved: nothing twice
    assert cluster.wait_job(job.job_id).state == "FAILED"  # the first run left with exit 75 after the hand-over
    assert cluster.wait_job(follow_up).state == "COMPLETED"
    assert not {job.job_id, follow_up} & cluster.squeue_ids()


def test_requeue_1_and_work_for_three_runs_ends_with_the_timeout_error_naming_both(chains, cluster):
    """(b): requeue=1: the second warning ends the chain; the error names both runs; nothing left in the queue."""
    job = chains["used_up"]
    with pytest.raises(JobTimeoutError, match=rf"^job {job.job_id} hit its walltime \(state TIMEOUT \(warned; not "
                       r"continued by a follow-up job\)\); it ran 2 times, requeue used up: run 1: node\d \S+ - \S+ "
                       r"TIMEOUT; run 2: node\d \S+ - \S+ TIMEOUT"):
        job.result(timeout=300)
    assert [a.ended for a in job.attempts] == ["TIMEOUT", "TIMEOUT"]
    ids = {job.job_id, *job._submission.follow_ups}
    assert len(ids) == 2
    for i in ids:
        cluster.wait_job(i)
    assert not ids & cluster.squeue_ids()
