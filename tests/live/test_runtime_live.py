"""What happens while jobs run, on the live cluster (site "testcluster"): ``await job`` in asyncio, a site-config
that claims accounting on a cluster whose sacct says it has none, a submission while slurmctld is down, and a
result file that shows only after the scheduler reports the job COMPLETED (``result_grace_s``).

Until these tests, each of these was shown only with a scripted transport (tests/unit/test_backend_status.py,
tests/unit/test_multirank.py) or on the local site (tests/local/test_local_site.py). Each docstring says what is
real and what is arranged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hpcbridge import Executor, JobState, load_site
from hpcbridge.errors import JobCancelledError, JobLostError

#: slurmctld's address and port (slurm.conf's SlurmctldHost and SlurmctldPort on the test cluster)
SLURMCTLD = ("10.77.0.1", 6817)


def square(x):
    return x * x


def slow_square(x, seconds):
    time.sleep(seconds)
    return x * x


def sleep_and_touch(path, seconds):
    with open(path, "w") as fh:
        fh.write(socket.gethostname())
    time.sleep(seconds)
    return "slept"


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


# -- await job ------------------------------------------------------------------------------------------------


def test_await_job_lets_other_coroutines_run_and_a_cancelled_await_cancels_the_job(ex, cluster, cluster_workdir):
    """In an asyncio program, ``await job`` gives the value of a real Slurm job while a ticker coroutine keeps
    ticking (the event loop is never blocked); cancelling the task that awaits a running job cancels the job:
    scancel runs, the job leaves squeue and sacct records it CANCELLED."""
    marker = cluster_workdir / "started"

    async def main():
        ticks = []

        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)

        ticking = asyncio.create_task(ticker())
        job = ex.submit(slow_square, 7, 2.0)
        await asyncio.sleep(0)  # the ticker's first tick
        start = len(ticks)
        value = await job
        during = ticks[start:]

        slow = ex.submit(sleep_and_touch, str(marker), 600)

        async def wait_for_slow():
            return await slow

        waiter = asyncio.create_task(wait_for_slow())
        deadline = time.monotonic() + 120
        while not marker.exists() or not marker.read_text():  # it runs on a node
            assert time.monotonic() < deadline, "the job never started"
            await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        ticking.cancel()
        return value, job, during, slow

    value, job, during, slow = asyncio.run(main())  # returns once the cancel (run on a worker thread) is over
    assert value == 49 and job.state == JobState.COMPLETED
    # the job slept 2 s on a node: the ticker ran all along, never held up by the await
    assert during[-1] - during[0] > 1.5 and len(during) > 20, during
    assert max(b - a for a, b in zip(during, during[1:])) < 1.0
    assert slow.cancelled() and slow.state == JobState.CANCELLED
    wait_for(lambda: slow.job_id not in cluster.squeue_ids(), 60, f"job {slow.job_id} leaving squeue")
    assert cluster.wait_job(slow.job_id, timeout=120).state == "CANCELLED"


# -- accounting auto-detection --------------------------------------------------------------------------------

#: the real sacct, reading a copy of the cluster's slurm.conf without its AccountingStorage* lines: it prints
#: what sacct prints on a cluster without accounting ("Slurm accounting storage is disabled") and exits 1
_SACCT_WITHOUT_ACCOUNTING = """#!/bin/sh
echo "sacct $*" >> "{log}"
SLURM_CONF="{conf}" exec /usr/bin/sacct "$@"
"""
_LOGGED = """#!/bin/sh
echo "{name} $*" >> "{log}"
exec /usr/bin/{name} "$@"
"""


def test_a_site_that_claims_accounting_switches_to_squeue_when_sacct_has_none(cluster, cluster_workdir,
                                                                              monkeypatch, caplog):
    """The site-config says ``accounting = true`` (testcluster.toml does), but sacct answers "Slurm accounting
    storage is disabled": hpcbridge says so once, switches to squeue (and scontrol) for good, and jobs still
    resolve, including one that ends without a result (its state can only come from squeue or scontrol).

    Real: the test cluster, sbatch, squeue, scontrol, scancel, and the sacct binary with its own message and exit
    code. Arranged: this cluster does keep accounting (slurmdbd), so ``sacct`` on the PATH is a wrapper that runs
    the real /usr/bin/sacct with SLURM_CONF set to a copy of /etc/slurm/slurm.conf without its AccountingStorage*
    lines, which is what sacct reads on a cluster without accounting. The wrappers log every sacct, squeue and
    scontrol call."""
    bindir = cluster_workdir / "bin"
    bindir.mkdir()
    conf = cluster_workdir / "slurm-without-accounting.conf"
    real = Path("/etc/slurm/slurm.conf").read_text().splitlines()
    conf.write_text("".join(f"{line}\n" for line in real if not line.startswith("AccountingStorage")))
    log = cluster_workdir / "commands.log"
    log.touch()
    (bindir / "sacct").write_text(_SACCT_WITHOUT_ACCOUNTING.format(log=log, conf=conf))
    for name in ("squeue", "scontrol"):
        (bindir / name).write_text(_LOGGED.format(name=name, log=log))
    for wrapper in bindir.iterdir():
        wrapper.chmod(0o755)
    probe = subprocess.run(["sh", str(bindir / "sacct"), "-X", "-n", "--jobs=1"], capture_output=True, text=True,
                           timeout=30, check=False)
    assert (probe.returncode, probe.stderr.strip()) == (1, "Slurm accounting storage is disabled"), probe
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    site = dataclasses.replace(load_site("testcluster"), poll_interval_max_s=2.0)
    assert site.accounting is True
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    assert ex._backend.facts.accounting is True
    caplog.set_level(logging.WARNING, logger="hpcbridge")
    job = ex.submit(square, 6)
    held = ex.submit(time.sleep, 600)
    assert job.result(timeout=120) == 36
    cluster.run(["/usr/bin/scancel", held.job_id])  # from outside hpcbridge: no result file, ever
    with pytest.raises(JobCancelledError, match=rf"^job {held.job_id} was cancelled \(state CANCELLED\)"):
        held.result(timeout=120)
    assert held.state == JobState.CANCELLED
    assert ex._backend.facts.accounting is False

    commands = log.read_text().splitlines()
    # the status queries' sacct (the usage gatherer's own sacct, with TotalCPU, is not the status path; a waiting
    # query may use squeue before the first sacct)
    sacct = [i for i, c in enumerate(commands) if c.startswith("sacct ") and "TotalCPU" not in c]
    squeue = [i for i, c in enumerate(commands) if c.startswith("squeue ") and "--states=all" in c]
    assert sacct and squeue, commands
    assert len(sacct) == 1, commands  # once it switched, sacct was never asked again for a status
    assert max(squeue) > sacct[0], commands
    notes = [r.getMessage() for r in caplog.records if "has no Slurm accounting" in r.getMessage()]
    assert notes == [
        "hpcbridge: site 'testcluster': it has no Slurm accounting; using squeue and scontrol show job (set "
        "`accounting = false` in its site-config)"
    ]


# -- a submission while slurmctld is down ---------------------------------------------------------------------


def _slurmctld_down() -> bool:
    try:
        socket.create_connection(SLURMCTLD, timeout=2).close()
    except OSError:
        return True
    return False


def test_a_submission_while_slurmctld_is_down_goes_through_once_it_is_back(cluster, cluster_workdir, caplog):
    """slurmctld is stopped for 15 s (tests/cluster/ctl slurmctld-outage, through sudo; run it under the shared
    lock: it stops the controller for everyone). A job submitted meanwhile: sbatch retries the controller for
    MessageTimeout (10 s) and fails with "Unable to contact slurm controller (connect failure)"; hpcbridge knows
    nothing was submitted and runs it again after a pause, and it goes through once slurmctld is back. Exactly
    one job carries the submission's tag, and its value comes back. The ctl command starts slurmctld again by
    itself; the test waits for it whatever happens, so the controller is back before the next test."""
    ex = Executor(site="testcluster", folder=str(cluster_workdir / "jobs"), name="ctld-down")
    ex._backend.check_remote_env()  # the cluster-side python check needs no controller: done before the outage
    before = cluster.squeue_ids()
    caplog.set_level(logging.WARNING, logger="hpcbridge")
    outage = subprocess.Popen(cluster.ctl("slurmctld-outage", "15"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(_slurmctld_down, 30, "slurmctld stopping")
        started = time.monotonic()
        job = ex.submit(square, 12)
        submit_s = time.monotonic() - started
    finally:
        out, _ = outage.communicate(timeout=240)  # slurmctld is started again whatever happened above
    assert outage.returncode == 0, out
    assert not _slurmctld_down()
    assert submit_s > 10, submit_s  # it waited for the controller rather than failing
    retries = [r.getMessage() for r in caplog.records if "trying again in" in r.getMessage()]
    assert retries and all(m.startswith("hpcbridge: sbatch: ") for m in retries), retries
    assert "Unable to contact slurm controller (connect failure)" in retries[0]
    assert job.result(timeout=120) == 144
    tag = ex._submissions[0].tag
    assert cluster.jobs_tagged(tag, job.job_id) == [job.job_id]  # exactly one job
    assert cluster.squeue_ids() - before <= {job.job_id}


# -- result_grace_s: a result file that shows late ------------------------------------------------------------


def late_result(value):
    """Return ``value``; the worker then writes its result file under a hidden name in ``res/`` (``late-0.0.pkl``,
    which hpcbridge does not take for a result), for the test to put in place when it chooses."""
    from hpcbridge import store

    real = store.write_atomic

    def hidden(path, data, mode=0o600):
        real(os.path.join(os.path.dirname(path), "late-" + os.path.basename(path)), data, mode)

    store.write_atomic = hidden
    return value


def test_a_result_that_shows_late_is_taken_within_result_grace_s_and_lost_after(cluster, cluster_workdir):
    """A site with ``result_grace_s = 12``. Two jobs end COMPLETED (sacct says so) with no result file in sight,
    as when the shared filesystem shows a node's file late. One result is put in place 9 s after the client saw
    COMPLETED (past the default 5 s grace and the poller's next look, at most 2 s later): it is taken. The other
    never shows: the job fails with JobLostError, not before the site's 12 s are over.

    Real: Slurm, sacct, the shared filesystem, the poller. Arranged: the lateness. Each job's worker writes its
    result under a hidden name (``late_result`` replaces ``store.write_atomic`` in the job's own process) and the
    test renames it into place, playing the slow filesystem."""
    grace = 12.0
    site = dataclasses.replace(load_site("testcluster"), result_grace_s=grace, poll_interval_max_s=2.0)
    ex = Executor(site=site, folder=str(cluster_workdir / "jobs"))
    shown, never = ex.submit(late_result, "shown late"), ex.submit(late_result, "never shown")
    completed = {}

    def seen_completed():
        for job in (shown, never):
            if job.state == JobState.COMPLETED and job not in completed:
                assert not job.done()  # the scheduler's word came first, without a result
                completed[job] = time.monotonic()
        return len(completed) == 2

    wait_for(seen_completed, 120, "sacct reporting both jobs COMPLETED")
    results = [Path(sub.folder) / "res" for sub in ex._submissions]  # shown's, never's
    assert [sorted(os.listdir(res)) for res in results] == [["late-0.0.pkl"]] * 2
    time.sleep(max(0.0, completed[shown] + 9 - time.monotonic()))
    assert not shown.done() and not never.done()
    os.replace(results[0] / "late-0.0.pkl", results[0] / "0.0.pkl")
    assert shown.result(timeout=grace) == "shown late"
    assert time.monotonic() - completed[shown] < grace
    with pytest.raises(JobLostError, match=rf"^job {never.job_id} ended \(COMPLETED, exit code 0\) without writing "
                                           "a result"):
        never.result(timeout=60)
    waited = time.monotonic() - completed[never]
    assert grace - 1 <= waited <= grace + 6, waited
    assert cluster.wait_job(never.job_id).state == "COMPLETED"
