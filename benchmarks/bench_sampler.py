"""The in-job sampler's cost (hpcbridge.sampler), against its budget: 1 % of one core at the default interval.

Measured in this process, as the worker runs it:

1. a thread waking every ``--interval`` (fast, to have something to measure) with the summary written every
   ``--write-every``: its own CPU time (``time.thread_time`` in the thread, what ``sampler_cpu_s`` reports) per
   wake and per write;
2. the same cost at the defaults (a wake every 5 s when a GPU is sampled, a write every 30 s): % of one core;
3. the worker's start + stop of one sampler (thread start, NVML import attempt, final write): CPU ms per rank;
4. folding one GPU sample (``GpuStats.add``); NVML's own calls cannot be measured without a GPU (none here).

    python benchmarks/bench_sampler.py [--seconds 10] [--interval 0.02] [--write-every 0.5]

The folder for the summaries is a temporary one on local disk; on a cluster's shared filesystem a write costs
more wall time but about the same CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from hpcbridge import sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.02, help="wake interval of the measured run (s)")
    ap.add_argument("--write-every", type=float, default=0.5, help="summary rewrite interval of the measured run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "use", "0.0.json")

        # 1. wakes only (no GPU: nothing sampled), then wakes with writes
        wake_cost = run(path, args.seconds / 2, args.interval, write_every=1e9)
        with_writes = run(path, args.seconds / 2, args.interval, write_every=args.write_every)
        wakes = (args.seconds / 2) / args.interval
        writes = (args.seconds / 2) / args.write_every
        per_wake = wake_cost / wakes
        per_write = max(0.0, (with_writes - wake_cost * 1.0)) / writes

        # 3. start + stop, as the worker does per rank
        n = 50
        t0 = time.process_time()
        for _ in range(n):
            sampler.Sampler(path, 0).start().stop()
        start_stop = (time.process_time() - t0) / n

        # 4. folding a GPU sample
        stats = sampler.GpuStats()
        m = 200_000
        t0 = time.process_time()
        for i in range(m):
            stats.add(i & 3, i % 101, i)
        fold = (time.process_time() - t0) / m

    default_wake, default_write = sampler.DEFAULT_INTERVAL_S, sampler.WRITE_EVERY_S
    no_gpu = per_write / default_write + per_wake / default_write  # without a GPU it wakes only to write
    with_gpu = (per_wake + fold) / default_wake + per_write / default_write  # + NVML's calls, not measured here
    budget = 0.01
    print(f"measured for {args.seconds:.0f} s: {per_wake * 1e6:.1f} us CPU per wake, {per_write * 1e6:.1f} us per "
          f"summary write, {fold * 1e6:.2f} us per GPU sample folded")
    print(f"worker start + stop of the sampler: {start_stop * 1e3:.2f} ms CPU per rank")
    print(f"at the defaults (wake {default_wake:.0f} s with a GPU, write {default_write:.0f} s):")
    print(f"  no GPU:   {100 * no_gpu:.5f} % of one core  (budget 1 %: {budget / no_gpu:,.0f}x under)")
    print(f"  with GPU: {100 * with_gpu:.5f} % of one core + NVML's calls  (budget 1 %: "
          f"{budget / with_gpu:,.0f}x under)")


def run(path: str, seconds: float, interval: float, write_every: float) -> float:
    """The sampler thread's own CPU seconds over ``seconds`` at ``interval`` and ``write_every``."""
    saved = sampler.WRITE_EVERY_S
    sampler.WRITE_EVERY_S = write_every
    try:
        s = sampler.Sampler(path, 0, interval_s=interval)
        s._open_nvml = lambda: (None, [(0, None)])  # type: ignore[method-assign]  # wake at `interval`
        s._sample = lambda nvml, handles: None  # type: ignore[method-assign]  # no GPU here: nothing to read
        s.start()
        time.sleep(seconds)
        s._stop.set()
        assert s._thread is not None
        s._thread.join()
        return s.thread_cpu_s
    finally:
        sampler.WRITE_EVERY_S = saved


if __name__ == "__main__":
    main()
