"""The torchrun agent of a job with requeue on (docs/requeue.md): ``torch.distributed.run``, kept alive through
the warning.

    python -m hpcbridge.torchrun_agent TORCHRUN-ARGS...

The batch shell forwards the scheduler's warning (USR2) to its launch step; srun passes it on to every task,
which for torchrun is the per-node agent. torch's elastic agent handles TERM, INT, HUP and QUIT only, so USR2's
default action ends it; srun then ends the step and the workers are stopped whether they have saved or not (seen
on the test cluster: ``srun: error: node2: task 1: User defined signal 2``). Here the agent catches USR2 instead
and passes it on to its workers (its own children: Slurm's process tracking may signal them too, and the handler
only sets a flag, so twice is harmless). The workers save and leave (exit 75); torch's agent then reports them as
failed, and this module exits 75 too, which the batch shell reads as "left to be requeued", when every worker
that ended left that way. Anything else ends as torch's agent ends it.

Standard library only; torch is the job's own.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from typing import Any, List, Optional

#: the worker's exit code when it left to be requeued (hpcbridge.worker.EXIT_REQUEUE)
EXIT_REQUEUE = 75

_warned = False


def children(pid: int, proc: str = "/proc") -> List[int]:
    """The processes whose parent is ``pid`` (from ``/proc/*/stat``)."""
    out = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc, name, "stat")) as fh:
                stat = fh.read()
        except OSError:  # it ended meanwhile
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "PID (COMM) ": state, ppid, ...
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(name))
    return out


def _forward(signum: int, frame: Any) -> None:
    global _warned
    _warned = True
    for pid in children(os.getpid()):
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def left_for_requeue(exc: BaseException) -> bool:
    """Whether torch's ``ChildFailedError`` says that every worker that ended exited 75."""
    failures = getattr(exc, "failures", None)
    if not isinstance(failures, dict) or not failures:
        return False
    return all(getattr(f, "exitcode", None) == EXIT_REQUEUE for f in failures.values())


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGUSR2, _forward)
    sys.argv = ["torchrun", *args]
    try:
        runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
    except Exception as exc:
        if _warned and left_for_requeue(exc):
            print("hpcbridge: torchrun: the workers saved and left to be requeued", file=sys.stderr)
            return EXIT_REQUEUE
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
