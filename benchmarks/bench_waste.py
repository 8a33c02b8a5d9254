"""The figure of issue 14: a fixed batch of jobs oversized the way users oversize them, as asked and then right-sized
from the first round's history, on the 3-node test cluster.

Each job touches ``--mb`` MB, then for about ``--seconds`` s alternates a fixed amount of CPU work on one core with
waiting (as a job that loads data, or waits on I/O or a service, does): ``--busy`` of its time computing, the rest
waiting. It asks for 2x the CPUs it needs (2), 8x the memory (its peak x 8) and 10x the walltime.

Why the jobs are not busy all the time: the test cluster's 3 nodes x 2 CPUs share 2 physical cores. Right-sized, 6
jobs run at once; busy all the time they would need 6 cores and each would run 3x slower, so the benchmark would
measure this machine's oversubscription, not the request. At the default ``--busy 0.2`` the 6 jobs need 1.2 cores. A
job that never computes (``--busy 0``) cannot lose more than half its reserved-idle time by going from 2 CPUs to the
minimum of 1, whatever hpcbridge does; the figure says so.

Round 1 runs the batch as asked; round 2 runs the same batch with ``Executor(right_size=True)``, which reads round
1's usage from the registry (a fresh ``$HPCBRIDGE_HOME``, so nothing else is in the history).

Prints, per round: the request, the makespan (first submission to the last result in hand), the core-hours reserved
and the reserved-but-idle core-hours (CPUs x elapsed - CPU time, from each job's usage); then the ratios, and the
in-job sampler's overhead (benchmarks/bench_sampler.py) when that script exists.

Run with the test cluster up and otherwise idle, under the shared lock, as the test user:

    flock /tmp/hpcbridge-live.lock runuser -u alice -- env -i HOME=/home/alice PATH=/opt/hpcbridge-test/venv/bin:\
/usr/bin:/bin PYTHONPATH=$PWD /opt/hpcbridge-test/venv/bin/python benchmarks/bench_waste.py [--jobs 12]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from hpcbridge import Executor


def work(seconds: float, mb: int, busy: float = 0.0, slices: int = 5) -> int:
    """Touch ``mb`` MB, then ``slices`` times: compute ``seconds * busy / slices`` s of CPU time on one core (a fixed
    amount of work: on a loaded node it takes longer), then wait ``seconds * (1 - busy) / slices`` s. Each job starts
    its cycle at a random phase (part of a wait moved to the start), as independent jobs do: jobs that all computed at
    the same instants would measure this machine's 2 cores, not their requests."""
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    wait = seconds * (1 - busy) / slices
    phase = random.Random().uniform(0, wait)
    time.sleep(phase)
    for n in range(slices):
        until = time.process_time() + seconds * busy / slices
        while time.process_time() < until:
            sum(range(10_000))
        time.sleep(wait - phase if n == slices - 1 else wait)
    return len(block)


def run_round(ex: Executor, n: int, seconds: float, mb: int, busy: float) -> Dict[str, Any]:
    start = time.monotonic()
    jobs = ex.map_jobs(work, [seconds] * n, [mb] * n, [busy] * n)
    jobs.results(timeout=1800)
    makespan = time.monotonic() - start
    usages = [job.usage() for job in jobs]  # type: ignore[attr-defined]
    reserved = sum((u.cpus or 0) * (u.elapsed_s or 0) for u in usages) / 3600
    used = sum(u.cpu_time_s or 0 for u in usages) / 3600
    sized = next(iter(ex._sized.values()), ex)  # the request right_size made
    res = sized.resources
    return {"makespan_s": makespan, "core_h": reserved, "idle_core_h": reserved - used,
            "request": f"cpus_per_task={res.cpus_per_task} mem_gb={res.mem_gb:g} walltime={res.walltime_hms}",
            "ids": [j.job_id for j in jobs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--mb", type=int, default=150, help="memory each job touches (its peak is this + ~60 MB)")
    parser.add_argument("--busy", type=float, default=0.2, help="the share of its time each job computes (0-1)")
    parser.add_argument("--site", default="testcluster")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # right_size says what it changed
    os.environ["HPCBRIDGE_HOME"] = tempfile.mkdtemp(prefix="bench-waste-")  # the history is round 1's only
    peak_gb = (args.mb + 60) / 1024
    asked = {"cpus_per_task": 2, "mem_gb": round(peak_gb * 8, 2), "walltime": args.seconds * 10 / 60}  # minutes
    print(f"{args.jobs} jobs of ~{args.seconds:g} s touching {args.mb} MB, computing {args.busy:.0%} of the time on "
          f"one core (1 CPU, ~{peak_gb:.2f} GB needed), asking "
          f"2x CPUs, 8x memory, 10x walltime, on site {args.site}")
    rounds: List[Tuple[str, Dict[str, Any]]] = []
    for label, right in (("as asked", False), ("right_size=True", True)):
        ex = Executor(site=args.site, right_size=right, **asked)
        rounds.append((label, run_round(ex, args.jobs, args.seconds, args.mb, args.busy)))
    print()
    print(f"{'round':18} {'request':44} {'makespan s':>10} {'core-h':>8} {'idle core-h':>11}")
    for label, r in rounds:
        print(f"{label:18} {r['request']:44} {r['makespan_s']:10.1f} {r['core_h']:8.4f} {r['idle_core_h']:11.4f}")
    (_, a), (_, b) = rounds
    print(f"\nthroughput x{a['makespan_s'] / b['makespan_s']:.2f} (makespan as asked / right-sized); reserved-idle "
          f"core-hours x{b['idle_core_h'] / a['idle_core_h']:.2f} of round 1 "
          f"({(1 - b['idle_core_h'] / a['idle_core_h']) * 100:.0f}% gone)")
    sampler = Path(__file__).with_name("bench_sampler.py")
    if sampler.exists():
        print("\nthe in-job sampler's overhead (benchmarks/bench_sampler.py):", flush=True)
        subprocess.run([sys.executable, str(sampler)], check=False, timeout=1800)
    else:
        print("\nthe in-job sampler's overhead: benchmarks/bench_sampler.py is not here")


if __name__ == "__main__":
    main()
