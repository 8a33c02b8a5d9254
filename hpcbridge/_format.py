"""On-disk formats shared by the client and the worker. Imported by the worker: keep it tiny.

A submission folder holds::

    script.sh            the batch script that was submitted
    inputs.bin           every task's pickled calls in one file (index + blobs)
    meta.json            what was submitted (for attach and the CLI)
    res/<task>.<rank>.pkl  one result file per task and rank, written atomically
    log/<task>.out|.err  scheduler-captured stdout/stderr
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import List

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
    return f"{task}.{rank}.pkl"


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
