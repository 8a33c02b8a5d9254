"""200 trivial calls on the live test cluster, in one run: hpcbridge vs submitit vs raw ``sbatch --array``.

Run as a cluster user that nothing else uses meanwhile (sdiag counts RPCs per user; the tests run as alice),
with the test cluster up and otherwise idle:

    runuser -u bob -- /opt/hpcbridge-test/venv/bin/python benchmarks/bench_map.py [--calls 200] [--rounds 2]

Prints, per method: wall time from submission to the last result in hand, the ratio to raw sbatch, the ratio to
submitit, and the slurmctld RPCs this user made during the run (from ``sdiag``'s per-user counters, diffed; sacct
queries go to slurmdbd and are counted separately as client-side scheduler commands where known).
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from hpcbridge import Executor, load_site

PYTHON = load_site("testcluster").python


def square(x: int) -> int:
    return x * x


def rpc_count(user: str) -> int:
    """slurmctld RPCs made by ``user`` so far (sdiag's per-user statistics)."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True, timeout=60).stdout
    section = out.split("Remote Procedure Call statistics by user", 1)[1]
    m = re.search(rf"^\s*{re.escape(user)}\s*\(\s*\d+\)\s*count:(\d+)", section, re.M)
    return int(m.group(1)) if m else 0


def run_raw(n: int, base: Path) -> Tuple[List[int], int]:
    folder = base / f"raw-{uuid.uuid4().hex[:6]}"
    (folder / "res").mkdir(parents=True)
    one_liner = (
        "import os; i = int(os.environ['SLURM_ARRAY_TASK_ID']); "
        f"open('{folder}/res/' + str(i), 'w').write(str(i * i))"
    )
    script = folder / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --array=0-{n - 1}\n#SBATCH --output={folder}/%a.out\n"
        "#SBATCH --partition=debug\n#SBATCH --mem=256M\n#SBATCH --time=10\n"
        f'exec {PYTHON} -c "{one_liner}"\n'
    )
    subprocess.run(["sbatch", "--parsable", str(script)], check=True, capture_output=True, timeout=60)
    while len(os.listdir(folder / "res")) < n:  # the same file fast path hpcbridge uses, at 0.2 s
        time.sleep(0.2)
    time.sleep(0.05)
    return [int((folder / "res" / str(i)).read_text()) for i in range(n)], 1


def run_hpcbridge(n: int, base: Path, chunksize: int) -> Tuple[List[int], int]:
    ex = Executor(site="testcluster", folder=str(base / "hpcb"))
    results = list(ex.map(square, range(n), chunksize=chunksize))
    return results, 1 + ex._backend.poller.queries


def run_submitit(n: int, base: Path) -> Tuple[List[int], int]:
    import submitit

    ex = submitit.AutoExecutor(folder=str(base / "submitit" / "%j"), cluster="slurm")
    ex.update_parameters(slurm_partition="debug", slurm_mem="256M", timeout_min=10)
    jobs = ex.map_array(square, range(n))
    return [j.result() for j in jobs], -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    n = args.calls
    user = getpass.getuser()
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%C"], capture_output=True, text=True, check=True).stdout
               .strip().split("/")[-1])
    chunk = math.ceil(n / cpus)  # tiny calls: one task per CPU slot, so each slot pays one Python start
    base = Path.home() / "hpcbridge-bench" / time.strftime("%Y%m%d-%H%M%S")
    base.mkdir(parents=True)
    methods: Dict[str, Callable[[], Tuple[List[int], int]]] = {
        "raw sbatch --array": lambda: run_raw(n, base),
        "hpcbridge map": lambda: run_hpcbridge(n, base, 1),
        f"hpcbridge map chunksize={chunk}": lambda: run_hpcbridge(n, base, chunk),
        "submitit map_array": lambda: run_submitit(n, base),
    }
    best: Dict[str, Tuple[float, int, int]] = {}
    for rnd in range(args.rounds):
        for name, fn in methods.items():
            rpc0 = rpc_count(user)
            t0 = time.perf_counter()
            results, commands = fn()
            wall = time.perf_counter() - t0
            rpcs = rpc_count(user) - rpc0 - 1  # less the second sdiag itself
            assert results == [i * i for i in range(n)], f"{name} returned wrong results"
            print(f"round {rnd + 1}: {name:32s} {wall:7.2f} s  slurmctld RPCs {rpcs:4d}  commands {commands}",
                  flush=True)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, rpcs, commands)
    raw = best["raw sbatch --array"][0]
    sub = best["submitit map_array"][0]
    print(f"\n{n} trivial calls on {cpus} CPUs (best of {args.rounds}):")
    print(f"{'method':34s} {'wall s':>8s} {'x raw':>7s} {'x submitit':>11s} {'RPCs/task':>10s} {'cmds/task':>10s}")
    for name, (wall, rpcs, commands) in best.items():
        cmds = f"{commands / n:10.3f}" if commands >= 0 else f"{'?':>10s}"
        print(f"{name:34s} {wall:8.2f} {wall / raw:7.2f} {wall / sub:11.2f} {rpcs / n:10.3f} {cmds}")
    print("RPCs: slurmctld RPCs of this user (sdiag, diffed); cmds: scheduler commands the client ran "
          "(submit + status queries; sacct goes to slurmdbd, which sdiag does not count)")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
