"""Runs inside the job: load this task's calls, run them, write the outcomes atomically.

Started as ``python -u -m hpcbridge.worker FOLDER`` with ``HPCBRIDGE_TASK`` naming the task. Imports only the
standard library, cloudpickle and hpcbridge's in-job modules (store, jobenv), and those only once it runs: every
job start pays for them.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

Outcome = Tuple[Any, ...]

#: the worker's exit code when a call left to be requeued (hpcbridge.checkpoint.save after the warning): no result
#: is written, and the batch shell requeues the task (docs/requeue.md)
EXIT_REQUEUE = 75


class _Requeue(Exception):
    """A call raised StopForRequeue: the task leaves without a result."""


def current_rank() -> int:
    """This process's rank from the launcher's variables (0 outside a multi-task launch; see hpcbridge.jobenv)."""
    from hpcbridge.jobenv import process_rank

    return process_rank(os.environ)


def _error_outcome(exc: BaseException, tb_text: str, dumps: Any) -> Outcome:
    try:
        blob: Optional[bytes] = dumps(exc)
    except Exception:
        blob = None
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ raises must still be reported
        message = f"<unprintable {type(exc).__name__}>"
    return ("err", blob, f"{type(exc).__module__}.{type(exc).__qualname__}", message, tb_text)


def run_calls(calls: List[Tuple[Any, Tuple[Any, ...], Dict[str, Any]]], dumps: Any) -> List[Outcome]:
    from hpcbridge.jobenv import CALL_VAR

    outcomes: List[Outcome] = []
    for i, (fn, args, kwargs) in enumerate(calls):
        os.environ[CALL_VAR] = str(i)  # the checkpoint's name (hpcbridge.checkpoint)
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: B036 - SystemExit/KeyboardInterrupt in user code are reported too
            if type(exc).__name__ == "StopForRequeue" and type(exc).__module__ == "hpcbridge.errors":
                raise _Requeue() from exc
            outcomes.append(_error_outcome(exc, traceback.format_exc(), dumps))
            continue
        outcomes.append(("ok", value))
    return outcomes


def dump_payload(payload: Dict[str, Any], dumps: Any) -> bytes:
    """Pickle the payload once; only when that fails, find the values that cannot be pickled and report them.

    (Checking every value first would pickle every result twice: double the time and the peak memory for a
    large array.)
    """
    try:
        data: bytes = dumps(payload)
        return data
    except Exception:
        pass
    outcomes = payload["outcomes"]
    for i, outcome in enumerate(outcomes):
        if outcome[0] != "ok":
            continue
        try:
            dumps(outcome[1])
        except Exception as exc:
            value = outcome[1]
            msg = f"the function returned a value that cannot be pickled ({type(value).__name__}): {exc}"
            outcomes[i] = ("err", None, "hpcbridge.errors.SerializationError", msg, traceback.format_exc())
    data = dumps(payload)
    return data


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hpcbridge.worker FOLDER  (HPCBRIDGE_TASK names the task)", file=sys.stderr)
        return 2
    import cloudpickle

    from hpcbridge import jobenv, store

    folder = argv[0]
    task = int(os.environ.get(jobenv.TASK_VAR, "0") or 0)
    rank = current_rank()
    os.environ[jobenv.FOLDER_VAR] = folder  # for hpcbridge.environment() in the callable
    if os.environ.get(jobenv.BIND_GPUS_VAR):  # the launcher does not bind GPUs: each rank takes its share
        from hpcbridge.gpus import bind_gpus

        bind_gpus()
    if os.environ.get(jobenv.REQUEUE_VAR):  # requeue on: the batch shell forwards the warning (USR2)
        from hpcbridge import checkpoint

        checkpoint.install()
    started = time.time()
    from hpcbridge import sampler

    meter = sampler.start(store.JobFolder(folder).usage(task, rank), rank)
    try:
        calls = cloudpickle.loads(store.read_input(store.JobFolder(folder).inputs, task))
    except BaseException as exc:
        hint = (
            "could not load the call on the cluster side "
            f"({type(exc).__name__}: {exc}). If a module is missing there, install it into the cluster's "
            "python, or ship it by value with cloudpickle.register_pickle_by_value(module)."
        )
        outcome = ("err", None, "hpcbridge.errors.RemoteEnvironmentError", hint, traceback.format_exc())
        outcomes: List[Outcome] = [outcome]
    else:
        try:
            outcomes = run_calls(calls, cloudpickle.dumps)
        except _Requeue:
            print(f"hpcbridge: warned, checkpoint saved: leaving to be requeued (rank {rank})", file=sys.stderr)
            return EXIT_REQUEUE
    payload = {
        "outcomes": outcomes,
        "rank": rank,
        "host": socket.gethostname(),
        "started": started,
        "finished": time.time(),
    }
    data = dump_payload(payload, cloudpickle.dumps)
    meter.stop()  # before the result: a client that sees the result finds the summary
    store.write_atomic(store.JobFolder(folder).result(task, rank), data)
    failed = [o for o in outcomes if o[0] == "err"]
    for o in failed:
        sys.stderr.write(o[4] if o[4] else f"{o[2]}: {o[3]}\n")
    if failed:
        print(f"hpcbridge: {len(failed)} of {len(outcomes)} call(s) raised (rank {rank})", file=sys.stderr)
        if os.environ.get(jobenv.LAUNCHER_VAR):
            # one of several ranks: leave now, skipping atexit handlers. mpi4py's MPI_Finalize (and other
            # collective shutdowns) would wait for ranks that are blocked waiting for this one, so the
            # launcher would never see the failure and end them; the job would hang until its walltime.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
