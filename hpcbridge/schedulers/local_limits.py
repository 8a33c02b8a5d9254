"""This machine's CPUs and memory as the local site's runner (:mod:`hpcbridge.schedulers.local_runner`) hands them
to tasks and watches them: affinity masks, CPU claims shared by every runner of a user, and the resident memory of
a task's process group. Linux's interfaces (sched_setaffinity, flock, /proc); standard library only.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from typing import Dict, List, Optional, Tuple


def machine_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity), or [] where there is no affinity (not Linux)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


class Cpus:
    """This machine's CPUs as the runner hands them to its tasks (``cpus`` each, as an affinity mask).

    A task takes CPUs no other running task of this user holds (a claim: ``cpuN`` in a private directory, locked
    with flock while the task runs; the kernel drops it when the runner ends, however it ends), then, where too few
    are free (more tasks at once than CPUs: ``parallel``, or other local jobs), shares those the fewest of this
    runner's own tasks use. Taking never waits: how many run at once is ``parallel``'s business.
    """

    def __init__(self) -> None:
        self.machine = machine_cpus()
        self.claims = _claims_dir() if self.machine else None
        self.mine: Dict[int, int] = {}  # CPU -> this runner's tasks on it
        self.lock = threading.Lock()

    def take(self, count: int, task: int) -> Tuple[List[int], List[int]]:
        """``count`` CPUs for ``task`` and the claims held for them (descriptors); ([], []) without affinity."""
        if not self.machine:
            return [], []
        start = task % len(self.machine)
        order = self.machine[start:] + self.machine[:start]  # tasks start from different CPUs
        got: List[int] = []
        fds: List[int] = []
        with self.lock:
            for cpu in order:
                if len(got) == min(count, len(order)):
                    break
                fd = self._claim(cpu)
                if fd is not None:
                    got.append(cpu)
                    fds.append(fd)
            rest = sorted((cpu for cpu in order if cpu not in got), key=lambda cpu: self.mine.get(cpu, 0))
            got += rest[: max(0, count - len(got))]
            for cpu in got:
                self.mine[cpu] = self.mine.get(cpu, 0) + 1
        return sorted(got), fds

    def give_back(self, cpus: List[int], fds: List[int]) -> None:
        with self.lock:
            for cpu in cpus:
                self.mine[cpu] -= 1
        for fd in fds:
            os.close(fd)  # the claim ends with its lock

    def _claim(self, cpu: int) -> Optional[int]:
        if self.claims is None:
            return None
        import fcntl

        try:
            fd = os.open(os.path.join(self.claims, f"cpu{cpu}"), os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another running task holds it
            os.close(fd)
            return None
        return fd


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _claims_dir() -> Optional[str]:
    """This user's CPU claims directory (``/dev/shm/hpcbridge-cpus-UID``, else in the temp folder), or None when
    there is none that is safely ours: then CPUs are shared among this runner's tasks only."""
    uid = os.getuid()
    for base in ("/dev/shm", tempfile.gettempdir()):
        path = os.path.join(base, f"hpcbridge-cpus-{uid}")
        with contextlib.suppress(OSError):
            os.mkdir(path, 0o700)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077:
            return path
    return None


def _group(pgid: int) -> List[Tuple[bytes, int]]:
    """(state, resident pages) of each process in process group ``pgid`` (zombies too: state ``Z``)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()  # after the command's name: state, ppid, pgrp ...
            if int(fields[2]) == pgid:
                found.append((fields[0], int(fields[21])))  # field 24 of stat(5): rss in pages
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return found


def group_rss(pgid: int) -> int:
    """The resident memory (bytes) of the processes in process group ``pgid``, summed as Slurm's jobacct_gather
    sums them (pages shared between them count once per process)."""
    return sum(pages for _, pages in _group(pgid)) * os.sysconf("SC_PAGE_SIZE")


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (not counting zombies, where /proc tells them apart)."""
    if os.path.isdir("/proc"):
        return any(state != b"Z" for state, _ in _group(pgid))
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True
