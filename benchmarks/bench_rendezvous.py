"""Allocation start -> first successful collective: a 3-node gloo all_reduce through hpcbridge, stage by stage.

Run as a cluster user (the test cluster must be up):

    runuser -u alice -- /opt/hpcbridge-test/venv/bin/python benchmarks/bench_rendezvous.py \\
        [--launcher srun|torchrun] [--nodes 3] [--tasks-per-node 1] [--rounds 3]

Each round submits one job whose callable does ``import torch``, ``hpcbridge.init_torch_distributed()`` (gloo)
and one ``all_reduce``, recording wall-clock timestamps on every rank. The stages (the slowest rank gates each
collective step, so each stage ends at the latest rank's timestamp):

    allocation   slurmctld's "Allocate JobId=" log line (ms), else sacct's Start (whole seconds)
    launch step  hpcbridge.rendezvous started on the first node (batch script + one python start)
    port chosen  master port bind-tested, claimed and published; the launcher is exec'd
    processes    every rank's python process exists (srun/torchrun fan-out; /proc start time, 10 ms)
    callable     the callable runs (python start, hpcbridge.worker, cloudpickle, unpickling the call)
    torch        ``import torch`` done
    init         ``init_process_group`` returned (TCP store on rank 0, gloo connections)
    all_reduce   the first all_reduce returned on every rank

The clocks are one machine's here; on a real cluster they are the nodes' (NTP: a few ms).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

import hpcbridge
from hpcbridge import Executor

SOURCES: Set[str] = set()
STAGES = ["launch step", "port chosen", "processes", "callable", "torch", "init", "all_reduce"]


def _process_start() -> float:
    """Wall-clock time this process was created (from /proc, 10 ms resolution)."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])  # field 22 of the whole line: starttime, clock ticks after boot
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def first_collective() -> Dict[str, float]:
    t_enter = time.time()
    t_proc = _process_start()
    import torch
    import torch.distributed as dist

    t_torch = time.time()
    env = hpcbridge.init_torch_distributed(backend="gloo", timeout_s=120)
    t_init = time.time()
    x = torch.ones(1)
    dist.all_reduce(x)
    t_ar = time.time()
    assert x.item() == env.world_size
    dist.destroy_process_group()
    return {"processes": t_proc, "callable": t_enter, "torch": t_torch, "init": t_init, "all_reduce": t_ar}


def allocation_start(job_id: str) -> Tuple[float, str]:
    """When slurmctld allocated the job: its log line (ms) when readable, else sacct's Start (whole seconds)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", config, re.M)
    pattern = re.compile(rf"^\[(\S+?)(\.\d+)?\] sched: Allocate JobId={job_id} ")
    for _ in range(10):  # the line may not be flushed yet
        if not (m and os.access(m.group(1), os.R_OK)):
            break
        with open(m.group(1), errors="replace") as fh:
            for line in fh:
                hit = pattern.match(line)
                if hit:
                    whole = time.mktime(time.strptime(hit.group(1), "%Y-%m-%dT%H:%M:%S"))
                    return whole + float(hit.group(2) or 0), "slurmctld log, ms"
        time.sleep(0.5)
    return sacct_start(job_id), "sacct Start, whole seconds"


def sacct_start(job_id: str) -> float:
    deadline = time.time() + 60
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "Start"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        if out and out[0].isdigit():
            return time.mktime(time.strptime(out.splitlines()[0], "%Y-%m-%dT%H:%M:%S"))
        time.sleep(0.5)
    raise RuntimeError(f"sacct has no start time for job {job_id}")


def one_round(ex: Executor) -> Dict[str, float]:
    submitted = time.time()
    job = ex.submit(first_collective)
    ranks = job.results(timeout=600)
    in_hand = time.time()
    rdv = json.loads(Path(job.folder, "rdv", "0.json").read_text())
    alloc, source = allocation_start(job.job_id)
    SOURCES.add(source)
    marks = {"launch step": rdv["started"], "port chosen": rdv["published"]}
    for stage in STAGES[2:]:
        marks[stage] = max(r[stage] for r in ranks)  # the slowest rank
    out = {"queue": alloc - submitted, "total": marks["all_reduce"] - alloc, "result in hand": in_hand - alloc}
    previous = alloc
    for stage in STAGES:
        out[stage] = marks[stage] - previous
        previous = marks[stage]
    out["slowest torch import"] = max(r["torch"] - r["callable"] for r in ranks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launcher", default="srun", choices=["srun", "torchrun"])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--tasks-per-node", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", default=os.path.expanduser("~/.hpcbridge/bench-rendezvous"))
    args = parser.parse_args()
    mem = 1.5 if args.launcher == "torchrun" else 1
    ex = Executor(site="testcluster", folder=args.folder, nodes=args.nodes, tasks_per_node=args.tasks_per_node,
                  launcher=args.launcher, mem_gb=mem, walltime="00:05:00")
    rounds: List[Dict[str, float]] = []
    for i in range(args.rounds):
        r = one_round(ex)
        rounds.append(r)
        print(f"round {i + 1}: allocation -> first all_reduce {r['total']:6.2f} s  "
              + "  ".join(f"{s} {r[s]:.2f}" for s in STAGES), flush=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"\n{args.nodes} nodes x {args.tasks_per_node} ranks, {args.launcher}, gloo; median of {args.rounds}:")
    print(f"  allocation start -> first successful all_reduce: {med['total']:.2f} s "
          f"(result in the client {med['result in hand']:.2f} s after allocation; queue wait {med['queue']:.2f} s)")
    width = max(len(s) for s in STAGES)
    for stage in STAGES:
        share = 100 * med[stage] / med["total"] if med["total"] > 0 else 0.0
        print(f"  {stage:{width}s} {med[stage]:6.2f} s  {share:5.1f} %  {'#' * round(share / 2)}")
    top = max(STAGES, key=lambda s: med[s])
    print(f"  dominated by: {top} ({med[top]:.2f} s); slowest single torch import {med['slowest torch import']:.2f} s")
    print(f"  (allocation start from: {', '.join(sorted(SOURCES))})")


if __name__ == "__main__":
    main()
