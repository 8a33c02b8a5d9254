"""A preemption with requeue on (docs/requeue.md): the time from the warning to the call running again, split into
hpcbridge's share and Slurm's, and the work recomputed against the checkpoint interval.

Run as a cluster user while the test cluster is up (its hidden partition ``preemptible``: PreemptMode=REQUEUE,
GraceTime=20, preempt_send_user_signal; the requeue delay is AuthInfo=cred_expire=10, so 11 s):

    runuser -u bob -- /opt/hpcbridge-test/venv/bin/python benchmarks/bench_requeue.py [--rounds 2]

Each round runs the training-like loop of tests/live/test_requeue_live.py (steps of 0.2 s) on a node of its own in
``preemptible`` and, after the loop's first checkpoint, preempts it with a 1-CPU ``urgent`` job on that node, for two
kinds of call:

    on warning   saves when ``should_stop()`` turns true (and every k steps): leaves at once
    periodic     saves every k steps only (a save after the warning still leaves at once): with an interval
                 longer than the grace (k=100: 20 s > 17 s) the shell stops it 3 s before the grace ends and
                 requeues it from the last periodic checkpoint: the recomputed work

Timeline per round (epoch seconds; the warning, the save and the requeue from the job's own notes, the second run's
allocation from slurmctld's log, ms):

    user         warning -> the checkpoint saved (the step under way, pickling)
    hpcbridge    saved -> ``scontrol requeue`` returned (the worker leaves, the batch shell requeues)
                 + second allocation -> the call running again (python, the worker, unpickling, checkpoint.load)
    slurm        ``scontrol requeue`` returned -> the second allocation (the requeue delay, cred_expire + 1 s,
                 and scheduling)

Goal (issue 13): hpcbridge's share under 1 s; recomputed work at most one checkpoint interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
import statistics
import subprocess
import time
from typing import Dict, List

from hpcbridge import Executor, load_site
from hpcbridge.attempts import parse_note
from hpcbridge.sites.limits import Partition
from hpcbridge.store import JobFolder

STEP_S = 0.2


def loop(steps: int, every: int, on_warning: bool, log: str, started: str) -> int:
    import hpcbridge
    from hpcbridge import checkpoint

    run = int(os.environ.get("HPCBRIDGE_RESTART", "0"))
    state = checkpoint.load(default={"step": 0, "total": 0})
    with open(f"{started}.{run}", "w") as fh:  # the call runs (again): when, where, from which step
        fh.write(f"{socket.gethostname()} {time.time()} {state['step']}")
    for step in range(state["step"], steps):
        time.sleep(STEP_S)
        state = {"step": step + 1, "total": state["total"] + step}
        with open(log, "a") as fh:
            fh.write(f"{run} {step} {time.time()}\n")
        if (step + 1) % every == 0 or (on_warning and hpcbridge.should_stop()):
            checkpoint.save(state)
    return int(state["total"])


def allocations(job_id: str) -> List[float]:
    """Every allocation of the job (one per run) from slurmctld's log, ms."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", config, re.M)
    assert m and os.access(m.group(1), os.R_OK), "slurmctld's log is not readable"
    # the main scheduler logs "sched: Allocate JobId=J", the backfill one "_start_job: Started JobId=J"
    pattern = re.compile(rf"^\[(\S+?)(\.\d+)?\] .*(?:Allocate|_start_job: Started) JobId={job_id} ")
    out = []
    with open(m.group(1), errors="replace") as fh:
        for line in fh:
            hit = pattern.match(line)
            if hit:
                whole = time.mktime(time.strptime(hit.group(1), "%Y-%m-%dT%H:%M:%S"))
                out.append(whole + float(hit.group(2) or 0))
    return out


def wait_file(path: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while not (os.path.exists(path) and open(path).read()):
        if time.time() > deadline:
            raise SystemExit(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)
    return open(path).read()


def one_round(ex: Executor, d: str, every: int, on_warning: bool) -> Dict[str, float]:
    tag = f"{every}-{int(on_warning)}-{time.time():.0f}"
    log, started = os.path.join(d, f"log-{tag}"), os.path.join(d, f"started-{tag}")
    steps = 200
    job = ex.submit(loop, steps, every, on_warning, log, started)
    node = wait_file(f"{started}.0", 180).split()[0]
    wait_file(JobFolder(job.folder).checkpoint_marker(0), 120)  # preempted after its first checkpoint
    time.sleep(2)
    subprocess.run(["sbatch", "--parsable", "--partition=urgent", f"--nodelist={node}", "-n1", "--time=1",
                    "--output=/dev/null", "--wrap=sleep 1"], check=True, capture_output=True, timeout=30)
    assert job.result(timeout=300) == sum(range(steps))
    folder = JobFolder(job.folder)
    reason, warned, requeued = parse_note(open(folder.run_note(0, 0)).read())
    assert warned is not None and requeued is not None, (warned, requeued)
    running_again = float(wait_file(f"{started}.1", 5).split()[1])
    allocs = allocations(job.job_id)
    assert len(allocs) >= 2, allocs
    rows = [line.split() for line in open(log).read().splitlines()]
    lines = [row[1] for row in rows]
    # the first run's last step (on warning: saved right after it; periodic: stopped 3 s before the grace ends)
    left_at = max(float(row[2]) for row in rows if row[0] == "0")
    return {
        "reason_preempted": float(reason == "PREEMPTED"),
        "user": left_at - float(warned),
        "hpcbridge": (float(requeued) - left_at) + (running_again - allocs[-1]),
        "slurm": allocs[-1] - float(requeued),
        "warning_to_running": running_again - float(warned),
        "recomputed_steps": float(len(lines) - len(set(lines))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--every", type=int, nargs="+", default=[10, 100])
    args = ap.parse_args()
    site = load_site("testcluster")
    parts = dict(site.partitions)
    parts["preemptible"] = Partition(name="preemptible", max_walltime="00:10:00")
    site = dataclasses.replace(site, partitions=parts)
    d = os.path.join(os.environ.get("HOME", "/tmp"), "hpcbridge-bench-requeue", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(d)
    ex = Executor(site=site, folder=os.path.join(d, "jobs"), requeue=2, signal_grace_s=20, partition="preemptible",
                  walltime=8, extra_directives=["--exclusive"])
    results: Dict[str, List[Dict[str, float]]] = {}
    for every in args.every:
        for on_warning in (True, False):
            key = f"k={every} steps ({every * STEP_S:.1f} s), {'on warning' if on_warning else 'periodic only'}"
            results[key] = [one_round(ex, d, every, on_warning) for _ in range(args.rounds)]
    print(f"preemption -> running again (step {STEP_S} s, {args.rounds} round(s) each, medians)")
    for key, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        every = int(key.split("=")[1].split()[0])
        print(f"{key}:")
        print(f"  warning -> running again {med['warning_to_running']:.2f} s = the call {med['user']:.2f} s (to its "
              f"last step) + hpcbridge {med['hpcbridge']:.2f} s + slurm {med['slurm']:.2f} s")
        print(f"  hpcbridge share / total: {med['hpcbridge'] / med['warning_to_running']:.3f}")
        print(f"  recomputed {med['recomputed_steps']:.0f} steps = {med['recomputed_steps'] * STEP_S:.1f} s; "
              f"ratio to the checkpoint interval: {med['recomputed_steps'] / every:.2f}")


if __name__ == "__main__":
    main()
