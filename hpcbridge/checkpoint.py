"""In the job: checkpoints that survive a requeue, and the warning that the job will end soon (docs/requeue.md).

    import hpcbridge
    from hpcbridge import checkpoint

    def train(steps, every):
        state = checkpoint.load(default={"step": 0, "total": 0})
        for step in range(state["step"], steps):
            state = {"step": step + 1, "total": state["total"] + step}
            if (step + 1) % every == 0 or hpcbridge.should_stop():
                checkpoint.save(state)      # after the warning: saves, then leaves to be requeued
        return state["total"]

With requeue on (``Executor(requeue=N)``) the batch shell traps the scheduler's warning (``--signal=B:USR2@S``)
and forwards it to the worker, whose handler only sets a flag: :func:`should_stop` turns true and
:func:`time_left` counts down the grace. :func:`save` writes the state atomically (rank 0 only, unless
``all_ranks=True``), then the task's marker that the shell checks; once the job was warned it raises
:class:`~hpcbridge.errors.StopForRequeue` after saving, the worker leaves without a result, and the shell requeues
the job. When the job starts again, :func:`load` returns the last saved state.

Imported by the worker only when requeue is on; standard library, cloudpickle on the first save or load.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, Optional, Tuple

from . import jobenv, store

#: the signal the batch shell forwards (Slurm ``--signal=B:USR2@S``); NCCL may use USR1
STOP_SIGNAL = signal.SIGUSR2

_warned_at: Optional[float] = None


def _on_warning(signum: int, frame: Any) -> None:
    global _warned_at
    if _warned_at is None:
        _warned_at = time.time()


def install() -> None:
    """Set the warning handler (the worker calls it before the first call; only the main thread may). With
    ``HPCBRIDGE_WARN_ON_TERM=1`` (PBS with requeue on: a preemption or ``qdel`` sends SIGTERM to every process of
    the job, the worker included, before SIGKILL after ``kill_delay``) SIGTERM warns the call too, instead of
    killing it before it could save."""
    signal.signal(STOP_SIGNAL, _on_warning)
    if os.environ.get(jobenv.WARN_ON_TERM_VAR) == "1":
        signal.signal(signal.SIGTERM, _on_warning)


def should_stop() -> bool:
    """True once the job has been told it will end soon (its walltime, a preemption): save and leave."""
    return _warned_at is not None


def time_left() -> Optional[float]:
    """Seconds until the job ends, or None when unknown (no walltime, not warned, or not in an hpcbridge job).

    Before the warning: from the walltime (the batch shell's ``HPCBRIDGE_DEADLINE``); after it: the grace the job
    was given (``signal_grace_s``), or less if the walltime ends sooner. The scheduler may warn up to a minute early.
    """
    ends = []
    deadline = os.environ.get(jobenv.DEADLINE_VAR, "")
    if deadline.isdigit():
        ends.append(float(deadline))
    grace = os.environ.get(jobenv.GRACE_VAR, "")
    if _warned_at is not None and grace.isdigit():
        ends.append(_warned_at + int(grace))
    return max(0.0, min(ends) - time.time()) if ends else None


def _where() -> Tuple[store.JobFolder, int, int]:
    folder = os.environ.get(jobenv.FOLDER_VAR)
    if not folder:
        from .errors import UsageError

        raise UsageError("hpcbridge.checkpoint works inside an hpcbridge job only (HPCBRIDGE_FOLDER is not set)")
    task = int(os.environ.get(jobenv.TASK_VAR, "0") or 0)
    call = int(os.environ.get(jobenv.CALL_VAR, "0") or 0)
    return store.JobFolder(folder), task, call


def save(state: Any, *, all_ranks: bool = False) -> None:
    """Save ``state`` as this call's checkpoint: pickled first (a state that cannot be pickled raises
    :class:`~hpcbridge.errors.SerializationError` and the last good checkpoint stays), then written atomically.

    Only rank 0 writes, unless ``all_ranks`` (then every rank writes the same file: give them the same state).
    After the warning (:func:`should_stop`) it raises :class:`~hpcbridge.errors.StopForRequeue` once saved, on every
    rank, so that the call leaves and the job is requeued. The other ranks first wait (until 3 s before the job's
    end at most) for rank 0's save after the warning: a rank that left first would have its launcher (srun's
    ``--kill-on-bad-exit``, torchrun's agent) stop rank 0 while it writes.
    """
    folder, task, call = _where()
    writes = all_ranks or jobenv.process_rank(os.environ) == 0
    if writes:
        import cloudpickle

        try:
            data = cloudpickle.dumps(state)
        except Exception as exc:
            from .errors import SerializationError

            raise SerializationError(
                f"checkpoint.save: the state cannot be pickled ({type(state).__name__}: {exc}); the last good "
                "checkpoint is kept. Save plain data (numbers, lists, dicts, arrays, a model's state_dict())."
            ) from exc
        os.makedirs(folder.checkpoint_dir, mode=0o700, exist_ok=True)
        store.write_atomic(folder.checkpoint(task, call), data)
        store.write_atomic(folder.checkpoint_marker(task), json.dumps(_marker(folder, task, call)).encode())
    elif should_stop():
        _wait_for_the_writer(folder, task)
    if should_stop():
        from .errors import StopForRequeue

        raise StopForRequeue("the job was warned that it ends soon: the checkpoint is saved, the job is requeued")


def _marker(folder: store.JobFolder, task: int, call: int) -> Dict[str, Any]:
    """The task's marker: this save, and each run's last save (``runs``: run -> ``{"saved": epoch,
    "since_start": seconds from the run's start}``), kept across runs for the work each interruption recomputed
    (:func:`hpcbridge.attempts.recomputed`)."""
    now = time.time()
    restart = os.environ.get(jobenv.RESTART_VAR, "0")
    runs: Dict[str, Any] = {}
    try:
        with open(folder.checkpoint_marker(task), "rb") as fh:
            old = json.loads(fh.read().decode("utf-8", "replace"))
        if isinstance(old, dict) and isinstance(old.get("runs"), dict):
            runs = old["runs"]
    except (OSError, ValueError):
        pass
    try:
        started: Optional[float] = float(os.environ.get(jobenv.RUN_START_VAR, ""))
    except ValueError:
        started = None
    runs[restart] = {"saved": now, "since_start": None if started is None else max(0.0, now - started)}
    if should_stop():  # the save after the warning: the other ranks may leave now (_wait_for_the_writer)
        runs[restart]["leaving"] = True
    return {"call": call, "time": now, "restart": restart, "runs": runs}


def _wait_for_the_writer(folder: store.JobFolder, task: int, poll_s: float = 0.05) -> None:
    """Until rank 0's marker says it saved after the warning in this run, or 3 s before the job's end (30 s when
    that is unknown)."""
    restart = os.environ.get(jobenv.RESTART_VAR, "0")
    left = time_left()
    give_up = time.time() + (30.0 if left is None else max(0.0, left - 3.0))
    while time.time() < give_up:
        try:
            with open(folder.checkpoint_marker(task), "rb") as fh:
                marker = json.loads(fh.read().decode("utf-8", "replace"))
            if marker["runs"][restart].get("leaving"):
                return
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        time.sleep(poll_s)


def load(default: Any = None) -> Any:
    """The last state :func:`save` wrote for this call (in an earlier run of the job), or ``default``."""
    folder, task, call = _where()
    try:
        with open(folder.checkpoint(task, call), "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return default
    import cloudpickle

    return cloudpickle.loads(data)
