"""Where this process runs: inside a batch job's allocation or not, and how long that allocation has left.

A notebook server that JupyterHub's batchspawner (or Open OnDemand) started is itself a Slurm or PBS job; its kernel
inherits the job's variables. :func:`here` tells which job that is and how long it has left: from the environment
where the batch system puts the end time there (``SLURM_JOB_END_TIME``, Slurm 23.02 and later), else from one
command of that batch system (``squeue --format=%L``, ``qstat -f``), run at most once per process, on this machine
(the notebook's own scheduler, whatever site its jobs go to). :func:`check_walltime` warns once per process when a
job asks for more time than that.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import warnings
from typing import Mapping, Optional, Tuple

from .errors import HpcBridgeError, WalltimeWarning
from .schedulers import scheduler_class
from .schedulers.allocation import ALLOCATIONS, Allocation
from .transport.local import LocalTransport

log = logging.getLogger("hpcbridge")

#: how long the one time-left command may take
QUERY_TIMEOUT_S = 20.0


@dataclasses.dataclass(frozen=True)
class Enclosing:
    """The batch job this process runs inside."""

    #: the batch system's adapter name (``slurm``, ``pbs``)
    scheduler: str
    job_id: str
    #: its node list, as the batch system gives it ('' when it does not)
    nodes: str = ""
    #: seconds left at ``measured_at`` (``time.monotonic()``); None: unknown (no limit, or it could not be read)
    left_s: Optional[float] = None
    measured_at: float = 0.0
    #: where ``left_s`` came from: the variable's name, the command's program, or ''
    source: str = ""

    def seconds_left(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left now (``now``: a ``time.monotonic()`` value), never below 0; None when unknown."""
        if self.left_s is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, self.left_s - (now - self.measured_at))

    def line(self, now: Optional[float] = None) -> str:
        """``inside Slurm job 8227 on node2, 0:41:10 left``: what the notebook display shows."""
        where = f" on {self.nodes}" if self.nodes else ""
        left = self.seconds_left(now)
        tail = "" if left is None else f", {hms(left)} left"
        return f"inside {_title(self.scheduler)} job {self.job_id}{where}{tail}"

    def __str__(self) -> str:
        return self.line()


def hms(seconds: float) -> str:
    """``2:03:04``, ``1-00:00:00`` for a day or more (Slurm's way of writing durations)."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h}:{m:02d}:{s:02d}"


def _title(scheduler: str) -> str:
    return {"slurm": "Slurm", "pbs": "PBS"}.get(scheduler, scheduler)


def _first(environ: Mapping[str, str], names: Tuple[str, ...]) -> str:
    return next((environ[n] for n in names if environ.get(n)), "")


def find_allocation(environ: Mapping[str, str]) -> Optional[Tuple[Allocation, str]]:
    """The allocation whose job id ``environ`` carries, and that id; None outside a batch job."""
    for allocation in ALLOCATIONS:
        job_id = _first(environ, allocation.job_id_vars)
        if job_id:
            return allocation, job_id
    return None


def left_from_end(end_epoch_text: str, now_epoch: float) -> Optional[float]:
    """Seconds from ``now_epoch`` to the end time an allocation variable gives (epoch seconds); None if it is not
    one (``0`` or empty: no limit known)."""
    try:
        end = float(end_epoch_text)
    except ValueError:
        return None
    return max(0.0, end - now_epoch) if end > 0 else None


def walltime_message(walltime_s: int, left_s: float, job_id: str, enclosing: Enclosing) -> Optional[str]:
    """The warning for a job that asks for more time than is left of the enclosing allocation; None if it fits."""
    if walltime_s <= left_s:
        return None
    return (
        f"job {job_id} asks for walltime {hms(walltime_s)}, longer than what is left of this notebook's own "
        f"allocation ({_title(enclosing.scheduler)} job {enclosing.job_id}: {hms(left_s)} left): it may still run "
        "when this kernel ends. It is not cancelled then, and `hpcbridge status` in a new server lists it; ask for "
        "less walltime, or start the notebook server with more."
    )


_lock = threading.Lock()
_found: Optional[Tuple[Optional[Enclosing]]] = None
_warned = False


def here(environ: Optional[Mapping[str, str]] = None) -> Optional[Enclosing]:
    """The batch job this process runs inside, or None. Found once per process (the one command, if needed, runs
    then); ``environ`` (tests): look at that environment instead, without keeping the answer."""
    global _found
    if environ is not None:
        return _discover(environ)
    with _lock:
        if _found is None:
            _found = (_discover(os.environ),)
        return _found[0]


def _discover(environ: Mapping[str, str]) -> Optional[Enclosing]:
    found = find_allocation(environ)
    if found is None:
        return None
    allocation, job_id = found
    nodes = _first(environ, allocation.nodelist_vars)
    now = time.monotonic()
    end = _first(environ, allocation.end_time_vars)
    left = left_from_end(end, time.time()) if end else None
    if left is not None:
        source = next(n for n in allocation.end_time_vars if environ.get(n))
        return Enclosing(allocation.scheduler, job_id, nodes, left, now, source)
    try:
        adapter = scheduler_class(allocation.scheduler)
    except HpcBridgeError:
        return Enclosing(allocation.scheduler, job_id, nodes)
    argv = adapter.time_left_argv(job_id)
    if argv is None:
        return Enclosing(allocation.scheduler, job_id, nodes)
    try:
        out = LocalTransport().run(argv, timeout=QUERY_TIMEOUT_S)
    except HpcBridgeError as exc:
        log.warning("hpcbridge: could not ask how long job %s has left: %s", job_id, exc)
        return Enclosing(allocation.scheduler, job_id, nodes)
    left_int = adapter.parse_time_left(out.stdout) if out.returncode == 0 else None
    if out.returncode != 0:
        log.warning("hpcbridge: %s failed (%s): %s", argv[0], out.returncode, out.stderr.strip()[-200:])
    return Enclosing(allocation.scheduler, job_id, nodes, left_int, now, argv[0] if left_int is not None else "")


def check_walltime(walltime_s: Optional[int], job_id: str) -> None:
    """Warn (:class:`~hpcbridge.errors.WalltimeWarning`, once per process) when a job's walltime is longer than
    what is left of the allocation this process runs inside."""
    global _warned
    if walltime_s is None or _warned:
        return
    enclosing = here()
    left = None if enclosing is None else enclosing.seconds_left()
    if enclosing is None or left is None:
        return
    message = walltime_message(walltime_s, left, job_id, enclosing)
    if message is None:
        return
    with _lock:
        if _warned:
            return
        _warned = True
    warnings.warn(WalltimeWarning(message), stacklevel=5)
