"""What a finished task's futures get (pure): result payloads into values or exceptions, a scheduler's end into
the error class that names the cause.

A result file holds ``{"outcomes": [...], "rank", "host", "started", "finished"}``; each outcome is ``("ok", value)``
or ``("err", pickled_exception_or_None, type_name, message, traceback_text)`` (docs/design.md, "The job folder").

A result file is unpickled only when nobody but the user could have written it (:func:`result_refusal`): unpickling
runs code, so a file in a folder another user can write to is refused, never loaded.
"""

from __future__ import annotations

import stat
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import cloudpickle

from . import errors
from .errors import last_lines
from .schedulers.base import NativeStatus
from .state import JobState
from .store import JobFolder
from .transport.base import OwnedFiles

#: a result file's payload, by rank
Payloads = Dict[int, Dict[str, Any]]

#: the scheduler's kills: the error class and how the message says it
KILLED: Dict[JobState, Tuple[Type[errors.JobKilledError], str]] = {
    JobState.TIMEOUT: (errors.JobTimeoutError, "hit its walltime"),
    JobState.OUT_OF_MEMORY: (errors.JobOutOfMemoryError, "ran out of memory"),
    JobState.NODE_FAIL: (errors.JobNodeFailError, "lost a node"),
    JobState.PREEMPTED: (errors.JobPreemptedError, "was preempted"),
    JobState.CANCELLED: (errors.JobCancelledError, "was cancelled"),
}
#: the lines of a job's stderr an error carries
TAIL_LINES = 30


def load_payload(blob: bytes, ncalls: int, rank: int) -> Dict[str, Any]:
    """A result file's payload; one that cannot be unpickled here becomes an error for each of its calls."""
    try:
        payload: Dict[str, Any] = cloudpickle.loads(blob)
        return payload
    except Exception as exc:
        message = (
            f"the job's result could not be unpickled on this side ({type(exc).__name__}: {exc}); "
            "the value's type must be importable here too"
        )
        outcome = ("err", None, "hpcbridge.errors.SerializationError", message, traceback.format_exc())
        return {"outcomes": [outcome] * ncalls, "rank": rank, "host": "?", "started": 0.0, "finished": 0.0}


#: the permission bits that let someone other than the owner write (hpcbridge makes folders 0700, files 0600)
SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


def result_refusal(folder: JobFolder, path: str, read: OwnedFiles) -> Optional[Tuple[str, List[str]]]:
    """Why the result file ``path`` of job folder ``folder`` must not be unpickled, and the paths at fault; None
    when it may be.

    The job folder, its ``res/`` folder and the file must belong to the cluster-side user (``read.uid``) and be
    writable by nobody else: whoever can write there could have put a pickle that runs their code here.
    """
    problems: List[str] = []
    at_fault: List[str] = []
    writable = False
    for what, where in (("the job folder", folder.path), ("its results folder", folder.results_dir),
                        ("the result file", path)):
        owner = read.owners.get(where)
        if owner is None:
            problems.append(f"{what} {where} could not be checked (its owner and mode did not come back)")
        elif owner.uid != read.uid:
            problems.append(f"{what} {where} belongs to uid {owner.uid}, not to you (uid {read.uid}; mode "
                            f"{owner.mode:04o})")
        elif owner.mode & SHARED_WRITE:
            who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("world", stat.S_IWOTH)) if owner.mode & bit)
            problems.append(f"{what} {where} is {who}-writable (mode {owner.mode:04o}, owner uid {owner.uid}: you)")
            writable = True
        else:
            continue
        at_fault.append(where)
    if not problems:
        return None
    if writable:
        todo = (f"if nobody else wrote there, make {'them' if len(at_fault) > 1 else 'it'} private again (chmod go-w "
                f"{' '.join(at_fault)}) and attach the job again (hpcbridge.attach), else submit the job again")
    else:
        todo = "submit the job again, and find out who changed its folder"
    message = (
        f"its result {path} was not unpickled, because someone other than you could have written it (unpickling "
        f"runs code): {'; '.join(problems)}. hpcbridge makes job folders 0700 and their files 0600; {todo}"
    )
    return message, at_fault


def refused_payload(message: str, paths: Sequence[str], ncalls: int, rank: int) -> Dict[str, Any]:
    """The payload of a result file that was refused (:func:`result_refusal`): an error for each of its calls,
    raised as :class:`~hpcbridge.errors.UntrustedResultError` (:func:`remote_exception`)."""
    outcome = ("err", None, "hpcbridge.errors.UntrustedResultError", message, "")
    return {"outcomes": [outcome] * ncalls, "rank": rank, "host": "?", "started": 0.0, "finished": 0.0,
            "refused": (message, tuple(paths))}


def checked_payload(folder: JobFolder, path: str, read: OwnedFiles, ncalls: int, rank: int) -> Dict[str, Any]:
    """The payload of result file ``path`` as read (``read.files[path]``): unpickled only if nobody else could
    have written it, else refused."""
    refusal = result_refusal(folder, path, read)
    if refusal is not None:
        return refused_payload(*refusal, ncalls, rank)
    return load_payload(read.files[path], ncalls, rank)


def any_error(got: Payloads) -> bool:
    """Whether any rank's outcome is an error (a failed rank fails its task at once)."""
    return any(o[0] == "err" for p in got.values() for o in p["outcomes"])


def stderr_tail(text: str) -> str:
    """The last lines of a job's stderr, as errors carry them."""
    return last_lines(text, TAIL_LINES)


def split_outcomes(got: Payloads, position: int) -> Tuple[List[Any], Optional[Tuple[int, Dict[str, Any], Any]]]:
    """The values of call ``position`` by rank, and its first failure ``(rank, payload, outcome)`` or None.

    The first rank to fail (by finish time, then rank) is the cause; the others' errors are usually its echo (a
    collective whose peer went away)."""
    values: List[Tuple[int, Any]] = []
    failure: Optional[Tuple[int, Dict[str, Any], Any]] = None
    for rank in sorted(got, key=lambda r: (got[r].get("finished", 0.0), r)):
        outcomes = got[rank]["outcomes"]
        outcome = outcomes[position] if position < len(outcomes) else outcomes[0]
        if outcome[0] == "ok":
            values.append((rank, outcome[1]))
        elif failure is None:
            failure = (rank, got[rank], outcome)
    return [v for _, v in sorted(values, key=lambda rv: rv[0])], failure


def missing_ranks_error(
    job_id: str, native: str, state: JobState, missing: Sequence[int], ranks: int, tail: str
) -> BaseException:
    """The error of a task some of whose ranks wrote no result (``native``: the scheduler's state, if known)."""
    shown = ", ".join(str(r) for r in missing[:20]) + (" ..." if len(missing) > 20 else "")
    return errors.JobLostError(
        f"job {job_id}: rank(s) {shown} of {ranks} wrote no result ({native or state.value}); their stderr is in "
        "the job's log",
        job_id=job_id,
        state=native,
        stderr_tail=tail,
    )


def remote_exception(
    job_id: str, rank: int, ranks: int, payload: Dict[str, Any], outcome: Sequence[Any], tail: str
) -> BaseException:
    """The callable's own exception, with the remote traceback as its cause; :class:`RemoteError` when its type
    cannot be rebuilt here."""
    _, blob, type_name, message, tb_text = outcome
    if "refused" in payload:  # never unpickled: the error is hpcbridge's own, not the callable's
        text, paths = payload["refused"]
        return errors.UntrustedResultError(f"job {job_id}: {text}", paths=paths, job_id=job_id, state="FAILED")
    where = f"job {job_id}" + (f", rank {rank}" if ranks > 1 else "") + f", host {payload['host']}"
    remote_tb = f"Remote traceback ({where}):\n{tb_text}"
    if tail:
        remote_tb += f"\n--- stderr of {job_id} (last lines) ---\n{tail}\n"
    exc: Optional[BaseException] = None
    if blob is not None:
        try:
            exc = cloudpickle.loads(blob)
        except Exception:
            exc = None
    if isinstance(exc, BaseException):
        exc.__cause__ = errors.RemoteTraceback(remote_tb)
        try:
            exc.remote_traceback = tb_text  # type: ignore[attr-defined]
            exc.rank = rank  # type: ignore[attr-defined]
        except Exception:  # exceptions with __slots__
            pass
        return exc
    return errors.RemoteError(
        f"{type_name}: {message} ({where})",
        type_name=type_name,
        remote_traceback=tb_text,
        rank=rank if ranks > 1 else None,
        job_id=job_id,
        state="FAILED",
        stderr_tail=tail,
    )


def end_error(
    job_id: str, status: NativeStatus, tail: str, after: Sequence[str], for_dependency: bool, runs: str = ""
) -> BaseException:
    """The error of a task that ended without a result: a kill by its class, a dependency's cancel, else lost.

    ``for_dependency``: the scheduler cancelled it before it started because a job in ``after`` did not succeed.
    ``runs``: a requeued job's runs (:func:`hpcbridge.attempts.describe`), named in a kill's message."""
    waited = " and ".join(after)
    if for_dependency:
        return errors.JobDependencyError(
            f"job {job_id} never ran: it was to start after {waited} completed successfully, and the scheduler "
            f"cancelled it ({status.native}) because that can no longer happen (a job it waited for failed, was "
            "cancelled or timed out)",
            after=after,
            job_id=job_id,
            state=status.native,
            stderr_tail=tail,
        )
    if status.state in KILLED:
        cls, what = KILLED[status.state]
        ran = f"; it ran {runs.count('run ')} times, requeue used up: {runs}" if runs else ""
        return cls(f"job {job_id} {what} (state {status.native}){ran}", job_id=job_id, state=status.native,
                   stderr_tail=tail)
    code = "" if status.exit_code is None else f", exit code {status.exit_code}"
    # a scheduler that does not say why (the Slurm-backed PBS wrappers) may have removed it for its dependency
    why = f"; it was to start after {waited}: if one of those failed, it never ran" if after else ""
    return errors.JobLostError(
        f"job {job_id} ended ({status.native}{code}) without writing a result; the job's stderr below usually says "
        f"why (python or hpcbridge missing on the node, a crash, a module load failure){why}",
        job_id=job_id,
        state=status.native,
        stderr_tail=tail,
    )


def never_started(status: NativeStatus) -> bool:
    """Whether the scheduler's status says the task never got nodes (cancelled while it waited)."""
    return status.nodes in ("", "None assigned")
