"""hpcbridge quickstart: Python functions in, results out.

Runs on the built-in ``local`` site (no cluster needed). Give a site name to run the same code on a cluster:

    .venv/bin/python examples/quickstart.py              # this machine (after the README's quickstart command)
    .venv/bin/python examples/quickstart.py mycluster    # a site-config named mycluster
"""

from __future__ import annotations

import random
import sys

from hpcbridge import Executor


def estimate_pi(seed: int, samples: int = 200_000) -> float:
    """A Monte-Carlo estimate of pi: the kind of function you would send to a cluster."""
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def main(site: str = "local") -> None:
    executor = Executor(site=site, walltime=5, mem_gb=0.5, cpus_per_task=1)

    job = executor.submit(estimate_pi, 0)
    print(f"submitted job {job.job_id} to site {site!r}; waiting ...")
    print(f"pi ~ {job.result():.4f}")

    estimates = list(executor.map(estimate_pi, range(8)))  # one array job, results in order
    print(f"8 array tasks: mean pi ~ {sum(estimates) / len(estimates):.4f}")

    try:
        executor.submit(int, "not a number").result()
    except ValueError as exc:
        print(f"a failure inside the job comes back as itself: ValueError: {exc}")

    print("\nthe batch script of the first job:\n" + job.script)


if __name__ == "__main__":
    main(*sys.argv[1:])
