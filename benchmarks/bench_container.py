"""What a container adds to a job's start: allocation start -> the callable running, with and without the image.

Run as a cluster user (the test cluster must be up, with its images: tests/cluster/up):

    runuser -u bob -- /opt/hpcbridge-test/venv/bin/python benchmarks/bench_container.py [--rounds 5]

Each round runs four jobs, one after the other: 1 rank (no launcher) and 3 nodes x 2 ranks (srun), each on the
host and in the worker image (Charliecloud, /var/lib/hpcbridge-testcluster/images/worker). The callable only
records the time. Per job:

    total      allocation start (slurmctld's log, ms; else sacct's Start) -> the callable runs on the last rank
    rank start a rank's process start (the runtime's, which execs python in the same process; /proc, 10 ms)
               -> the callable runs on it: python, the worker, cloudpickle, unpickling the call, and ch-run's
               namespaces and binds in the container. The slowest rank of the job counts.

Printed: the medians, the difference per rank start (container - host) and the ratio (container / host). The goal
(issue 12) is at most 0.2 s added per rank start.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from typing import Any, Dict, List, Tuple

from bench_rendezvous import allocation_start  # the same clock for both (benchmarks/ is on sys.path for its scripts)

from hpcbridge import Executor

WORKER = "/var/lib/hpcbridge-testcluster/images/worker"


def _process_start() -> float:
    """Wall-clock time this process was created (from /proc, 10 ms resolution)."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def entered() -> Dict[str, Any]:
    return {"callable": time.time(), "process": _process_start(), "host": socket.gethostname(),
            "in_image": os.environ.get("CH_RUNNING")}


def one_job(ex: Executor, ranks: int, contained: bool) -> Dict[str, float]:
    job = ex.submit(entered)
    marks = job.results(timeout=600)
    assert len(marks) == ranks and all((m["in_image"] is not None) == contained for m in marks), marks
    alloc, _ = allocation_start(job.job_id)
    return {"total": max(m["callable"] for m in marks) - alloc,
            "rank start": max(m["callable"] - m["process"] for m in marks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image", default=WORKER)
    parser.add_argument("--folder", default=os.path.expanduser("~/.hpcbridge/bench-container"))
    args = parser.parse_args()
    shapes = {"1 rank": {}, "3x2 ranks": {"nodes": 3, "tasks_per_node": 2, "launcher": "srun"}}
    runs: Dict[Tuple[str, bool], List[Dict[str, float]]] = {(s, c): [] for s in shapes for c in (False, True)}
    executors = {(s, c): Executor(site="testcluster", folder=args.folder, walltime="00:05:00", mem_gb=0.25,
                                  container=args.image if c else None, **kw)
                 for s, kw in shapes.items() for c in (False, True)}
    for i in range(args.rounds):
        for (shape, contained), ex in executors.items():
            ranks = 6 if shape == "3x2 ranks" else 1
            r = one_job(ex, ranks, contained)
            runs[(shape, contained)].append(r)
            print(f"round {i + 1} {shape:9s} {'container' if contained else 'host':9s}: total {r['total']:.3f} s, "
                  f"slowest rank start {r['rank start']:.3f} s", flush=True)
    print(f"\nmedian of {args.rounds} rounds (image {args.image}, charliecloud):")
    print(f"{'':10s} {'measure':11s} {'host':>8s} {'container':>10s} {'difference':>11s} {'ratio':>6s}")
    for shape in shapes:
        for measure in ("rank start", "total"):
            host = statistics.median(r[measure] for r in runs[(shape, False)])
            inside = statistics.median(r[measure] for r in runs[(shape, True)])
            print(f"{shape:10s} {measure:11s} {host:8.3f} {inside:10.3f} {inside - host:+11.3f} "
                  f"{inside / host if host > 0 else float('nan'):6.2f}")
    print("\ndifference per rank start: the 'rank start' rows (goal: at most +0.200 s)")


if __name__ == "__main__":
    main()
