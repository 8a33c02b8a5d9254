"""The job folder: every path in it, and the formats of its files. The one owner of the layout.

Imported by the worker on every job start: standard library only, keep it tiny. Cluster paths are POSIX paths.
A submission folder ``<workdir>/<tag>/`` holds::

    script.sh               the batch script, exactly as submitted
    inputs.bin              every task's pickled calls in one file (index + blobs)
    meta.json               what was submitted (for attach and the CLI)
    res/<task>.<rank>.pkl   one result file per task and rank, written atomically
    use/<task>.<rank>.json  the in-job sampler's summary of that rank (hpcbridge.sampler; it makes the folder)
    log/<task>.out|.err     scheduler-captured stdout/stderr (PBS: log/pbs.out, then per task; log/nodefile.<task>
                            where the PBS template writes a node file from Slurm's node list)
    rdv/<task>.json         multi-rank jobs: the master address and port the launch step chose
    ckpt/<task>.<call>.pkl  requeue on: a call's last checkpoint (hpcbridge.checkpoint.save), written atomically
    ckpt/<task>.saved       ... and its marker, which the batch shell checks before it requeues the task
    ckpt/<task>.run<N>      ... what ended run N of the task (PREEMPTED, TIMEOUT) and when, written by the shell
                            (PBS: also the id of the follow-up job that continues it, docs/requeue.md)
    ckpt/cancelled          PBS, requeue on: the client cancelled the job; the shell submits no follow-up job
    container.env           apptainer/singularity jobs: the host variables the container sees (--env-file)
    submitted[.out|.err|.rc]  the submit command's marker and its record (exactly-once submission)
"""

from __future__ import annotations

import os
import posixpath
import re
import struct
import tempfile
from typing import List, NamedTuple, Optional, Tuple, Union

#: a job folder as it can stand in scheduler directives unquoted: absolute, no spaces, quotes, % or #
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+,@=:/~-]*$")

MAGIC = b"HPCB1\n"
_HEAD = struct.Struct("<Q")
_ENTRY = struct.Struct("<QQ")


def pack_inputs(blobs: List[bytes]) -> bytes:
    """One file holding every task's blob, readable one task at a time."""
    head = MAGIC + _HEAD.pack(len(blobs))
    offset = len(head) + _ENTRY.size * len(blobs)
    table = []
    for blob in blobs:
        table.append(_ENTRY.pack(offset, len(blob)))
        offset += len(blob)
    return head + b"".join(table) + b"".join(blobs)


def read_input(path: str, index: int) -> bytes:
    """The blob of task ``index`` from an inputs file, reading only that blob."""
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC) + _HEAD.size)
        if not head.startswith(MAGIC):
            raise ValueError(f"{path} is not an hpcbridge inputs file")
        (count,) = _HEAD.unpack_from(head, len(MAGIC))
        if not 0 <= index < count:
            raise IndexError(f"task {index} not in {path} (it holds {count})")
        fh.seek(len(head) + index * _ENTRY.size)
        offset, length = _ENTRY.unpack(fh.read(_ENTRY.size))
        fh.seek(offset)
        return fh.read(length)


def result_name(task: int, rank: int) -> str:
    """The name of a task's and rank's result file in ``res/``."""
    return f"{task}.{rank}.pkl"


def parse_result_name(name: str) -> Optional[Tuple[int, int]]:
    """``(task, rank)`` of a result file's name, or None for anything else in ``res/`` (temporary files)."""
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "pkl" or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    task, rank = int(parts[0]), int(parts[1])
    return (task, rank) if result_name(task, rank) == name else None


class JobFolder(NamedTuple):
    """The paths of one submission's folder (``path``: the folder itself, a cluster-side absolute path)."""

    path: str

    @property
    def script(self) -> str:
        return posixpath.join(self.path, "script.sh")

    @property
    def inputs(self) -> str:
        return posixpath.join(self.path, "inputs.bin")

    @property
    def meta(self) -> str:
        return posixpath.join(self.path, "meta.json")

    @property
    def submit_marker(self) -> str:
        """The exactly-once marker of the submit command (its record: ``.out``, ``.err``, ``.rc`` beside it)."""
        return posixpath.join(self.path, "submitted")

    @property
    def results_dir(self) -> str:
        return posixpath.join(self.path, "res")

    @property
    def logs_dir(self) -> str:
        return posixpath.join(self.path, "log")

    @property
    def rendezvous_dir(self) -> str:
        return posixpath.join(self.path, "rdv")

    @property
    def subdirs(self) -> Tuple[str, ...]:
        """The folders made before a job is submitted (the job writes into them)."""
        return (self.logs_dir, self.results_dir)

    def result(self, task: int, rank: int) -> str:
        return posixpath.join(self.path, "res", result_name(task, rank))

    def usage(self, task: int, rank: int) -> str:
        """The in-job sampler's summary of a task's rank (JSON, beside its result; :mod:`hpcbridge.sampler`)."""
        return posixpath.join(self.path, "use", f"{task}.{rank}.json")

    def log(self, task: Union[int, str], kind: str) -> str:
        """A task's captured ``out`` or ``err``; ``task`` may be a scheduler's pattern (``%a``)."""
        return posixpath.join(self.path, "log", f"{task}.{kind}")

    def log_pattern(self, task_pattern: str) -> str:
        """The log path prefix for a scheduler's output directive (``%a`` for Slurm arrays): ``...log/%a``."""
        return posixpath.join(self.path, "log", task_pattern)

    @property
    def pbs_log(self) -> str:
        """Where PBS writes the joined output of a job (``-o``); its path carries the tag (found by it)."""
        return posixpath.join(self.path, "log", "pbs.out")

    def rendezvous(self, task: int) -> str:
        return posixpath.join(self.path, "rdv", f"{task}.json")

    @property
    def checkpoint_dir(self) -> str:
        """requeue on (docs/requeue.md): the calls' checkpoints, their markers and the runs' notes."""
        return posixpath.join(self.path, "ckpt")

    def checkpoint(self, task: int, call: int) -> str:
        """The last state ``hpcbridge.checkpoint.save`` wrote for call ``call`` of task ``task``."""
        return posixpath.join(self.path, "ckpt", f"{task}.{call}.pkl")

    def checkpoint_marker(self, task: Union[int, str]) -> str:
        """Written after each checkpoint of the task: the batch shell requeues only when it exists (or the call
        is restartable from scratch)."""
        return posixpath.join(self.path, "ckpt", f"{task}.saved")

    def run_note(self, task: Union[int, str], restart: Union[int, str]) -> str:
        """The batch shell's note of how run ``restart`` of the task ended (``REASON WARNED REQUEUED`` epochs);
        ``task`` and ``restart`` may be shell expressions."""
        return posixpath.join(self.path, "ckpt", f"{task}.run{restart}")

    @property
    def requeue_cancelled(self) -> str:
        """PBS, requeue on (docs/requeue.md): written by the client before it cancels the job, so that a batch shell
        warned by the cancel submits no follow-up job."""
        return posixpath.join(self.path, "ckpt", "cancelled")

    @property
    def container_env(self) -> str:
        """apptainer/singularity jobs: the ``--env-file`` naming the host variables the container sees."""
        return posixpath.join(self.path, "container.env")


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
