"""Torque-compatible layers over Slurm (Debian's ``slurm-wlm-torque``): their "bare" arrays (pure).

Their qsub prints a plain id (``46``) for an array and cannot name its tasks: their ``qstat`` shows each started
task under an unrelated Slurm id and their ``qdel 46[1]`` cancels the whole array. Such arrays are followed as a
group (every task gets the group's state) and their tasks cannot be cancelled one by one (docs/pbs.md).
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, MutableMapping, Optional, Sequence, Tuple

from ...errors import SchedulerError
from ...state import JobState
from ..base import NativeStatus
from .qstat import Record

_BARE_TASK = re.compile(r"^(\d+)\[(\d+)\]$")
#: (Job_Name, Job_Owner, qtime): what an array's split-off tasks share with its own record
GroupKey = Tuple[str, str, str]


def is_bare_task(task_id: str) -> bool:
    """Whether ``task_id`` (``46[3]``) is a task of a bare array: only its group says anything about it."""
    return bool(_BARE_TASK.match(task_id))


def bare_arrays(job_ids: Sequence[str], arrays: Mapping[str, int]) -> Dict[str, int]:
    """The bare arrays among ``job_ids`` (array submissions whose id is a plain number) -> their sizes."""
    return {j: n for j, n in arrays.items() if j.isdigit() and j in job_ids}


def group_key(rec: Mapping[str, str]) -> GroupKey:
    return (rec.get("Job_Name", ""), rec.get("Job_Owner", ""), rec.get("qtime", ""))


def bare_group(
    base: str, size: int, key: Optional[GroupKey], records: Mapping[str, Record], out: MutableMapping[str, NativeStatus]
) -> Optional[GroupKey]:
    """Add the status of every task of bare array ``base`` to ``out``; return its group key (learned from its own
    record when qstat lists it, else ``key``, the one learned before)."""
    own = records.get(base)
    if own is not None:
        key = group_key(own)
    members = []
    if key is not None:
        for job_id, rec in records.items():
            if job_id.isdigit() and int(job_id) >= int(base) and group_key(rec) == key:
                members.append(rec.get("job_state", ""))
    running = sum(code in ("R", "E", "S") for code in members)
    queued = sum(code in ("Q", "H", "W", "T") for code in members)
    if running:
        state, native = JobState.RUNNING, f"R (array {base}: {running} running, {queued} queued)"
    elif queued:
        state, native = JobState.PENDING, f"Q (array {base}: {queued} queued)"
    else:
        state, native = JobState.COMPLETED, f"C (every task of array {base} has ended; exit status not reported)"
    for index in range(size):
        task = f"{base}[{index}]"
        out[task] = NativeStatus(task, state, native)
    return key


def check_cancel(job_ids: Sequence[str]) -> None:
    """Refuse to cancel tasks of a bare array on their own: its qdel would cancel the whole array."""
    bare = [j for j in job_ids if is_bare_task(j)]
    if bare:
        base = bare[0].split("[", 1)[0]
        raise SchedulerError(
            f"cannot cancel {', '.join(bare)} on its own: this site's qsub printed the plain id {base} for "
            f"the array, so its qdel knows only the whole array (qdel {bare[0]} would cancel every task). "
            "Cancel all of its unfinished jobs together (executor.shutdown(cancel_futures=True), or stop "
            "reading a map's results), or submit calls you may cancel alone as separate jobs."
        )
