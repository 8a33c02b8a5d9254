"""PBS state letters and exit statuses, and qstat records read with them into statuses (pure)."""

from __future__ import annotations

import re
from typing import Dict, Mapping, MutableMapping, Optional, Tuple

from ...state import JobState
from ..base import NativeStatus
from .qstat import expand_range

#: PBS Pro / OpenPBS ``job_state`` letters (qstat(1B)); ``F`` and ``X`` are final and read with Exit_status.
PBSPRO_STATES: Dict[str, JobState] = {
    "B": JobState.RUNNING,  # array job: at least one subjob has begun
    "E": JobState.RUNNING,  # exiting after having run
    "H": JobState.PENDING,  # held
    "M": JobState.PENDING,  # moved to another server (peer scheduling); still alive there
    "Q": JobState.PENDING,  # queued
    "R": JobState.RUNNING,
    "S": JobState.RUNNING,  # suspended by the server
    "T": JobState.PENDING,  # being moved (transit)
    "U": JobState.RUNNING,  # cycle-harvesting job suspended by keyboard activity
    "W": JobState.PENDING,  # waiting for its start time (or a failed stage-in)
}
#: Torque ``job_state`` letters; ``C`` (completed) is final and read with exit_status.
TORQUE_STATES: Dict[str, JobState] = {
    "E": JobState.RUNNING,
    "H": JobState.PENDING,
    "Q": JobState.PENDING,
    "R": JobState.RUNNING,
    "S": JobState.RUNNING,
    "T": JobState.PENDING,
    "W": JobState.PENDING,
    "U": JobState.UNKNOWN,  # slurm-wlm-torque's "unknown Slurm state"
}
FINAL_CODES = {"pbspro": ("F", "X"), "torque": ("C",)}

#: PBS Pro's own exit statuses (``JOB_EXEC_*``, openpbs src/include/job.h) -> (name, state)
PBSPRO_EXIT: Dict[int, Tuple[str, JobState]] = {
    -1: ("JOB_EXEC_FAIL1", JobState.FAILED),
    -2: ("JOB_EXEC_FAIL2", JobState.FAILED),
    -3: ("JOB_EXEC_RETRY", JobState.FAILED),
    -4: ("JOB_EXEC_INITABT", JobState.FAILED),
    -5: ("JOB_EXEC_INITRST", JobState.FAILED),
    -6: ("JOB_EXEC_INITRMG", JobState.FAILED),
    -7: ("JOB_EXEC_BADRESRT", JobState.FAILED),
    -10: ("JOB_EXEC_FAILUID", JobState.FAILED),
    -11: ("JOB_EXEC_RERUN", JobState.FAILED),
    -12: ("JOB_EXEC_CHKP", JobState.FAILED),
    -13: ("JOB_EXEC_FAIL_PASSWORD", JobState.FAILED),
    -14: ("JOB_EXEC_RERUN_SIS_FAIL", JobState.NODE_FAIL),
    -15: ("JOB_EXEC_QUERST", JobState.FAILED),
    -16: ("JOB_EXEC_FAILHOOK_RERUN", JobState.FAILED),
    -17: ("JOB_EXEC_FAILHOOK_DELETE", JobState.FAILED),
    -18: ("JOB_EXEC_HOOK_RERUN", JobState.FAILED),
    -19: ("JOB_EXEC_HOOK_DELETE", JobState.FAILED),
    -20: ("JOB_EXEC_RERUN_MS_FAIL", JobState.NODE_FAIL),
    -21: ("JOB_EXEC_FAIL_SECURITY", JobState.FAILED),
    -22: ("JOB_EXEC_HOOKERROR", JobState.FAILED),
    -23: ("JOB_EXEC_FAIL_KRB5", JobState.FAILED),
    -24: ("JOB_EXEC_KILL_NCPUS_BURST", JobState.FAILED),
    -25: ("JOB_EXEC_KILL_NCPUS_SUM", JobState.FAILED),
    -26: ("JOB_EXEC_KILL_VMEM", JobState.OUT_OF_MEMORY),
    -27: ("JOB_EXEC_KILL_MEM", JobState.OUT_OF_MEMORY),
    -28: ("JOB_EXEC_KILL_CPUT", JobState.FAILED),
    -29: ("JOB_EXEC_KILL_WALLTIME", JobState.TIMEOUT),
    -30: ("JOB_EXEC_JOINJOB", JobState.FAILED),
}
#: Torque's own exit statuses (Torque 6 "Job Exit Status"; -10..-12 differ from PBS Pro's meaning)
TORQUE_EXIT: Dict[int, Tuple[str, JobState]] = {
    -1: ("JOB_EXEC_FAIL1", JobState.FAILED),
    -2: ("JOB_EXEC_FAIL2", JobState.FAILED),
    -3: ("JOB_EXEC_RETRY", JobState.FAILED),
    -4: ("JOB_EXEC_INITABT", JobState.FAILED),
    -5: ("JOB_EXEC_INITRST", JobState.FAILED),
    -6: ("JOB_EXEC_INITRMG", JobState.FAILED),
    -7: ("JOB_EXEC_BADRESRT", JobState.FAILED),
    -8: ("JOB_EXEC_CMDFAIL", JobState.FAILED),
    -9: ("JOB_EXEC_STDOUTFAIL", JobState.FAILED),
    -10: ("JOB_EXEC_OVERLIMIT_MEM", JobState.OUT_OF_MEMORY),
    -11: ("JOB_EXEC_OVERLIMIT_WT", JobState.TIMEOUT),
    -12: ("JOB_EXEC_OVERLIMIT_CPUT", JobState.FAILED),
    -13: ("JOB_EXEC_CGROUP", JobState.FAILED),
    -14: ("JOB_EXEC_PROLOGUE", JobState.FAILED),
}
#: PBS Pro history substate of a job ended by a delete request (openpbs job.h: JOB_SUBSTATE_TERMINATED)
SUBSTATE_TERMINATED = "91"
#: Both report a job killed by a signal as 256 + the signal's number.
SIGNAL_BASE = 256
_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 12: "SIGUSR2", 15: "SIGTERM"}

STATES = {"pbspro": PBSPRO_STATES, "torque": TORQUE_STATES}
EXIT_NAMES = {"pbspro": PBSPRO_EXIT, "torque": TORQUE_EXIT}


def record_status(flavour: str, job_id: str, rec: Mapping[str, str]) -> NativeStatus:
    """One qstat record -> a status, with the final state read from the exit status."""
    code = rec.get("job_state", "").strip()
    exit_text = (rec.get("Exit_status") or rec.get("exit_status") or "").strip()
    exit_code = int(exit_text) if re.fullmatch(r"-?\d+", exit_text) else None
    nodes = rec.get("exec_host", "")
    reason = rec.get("comment", "")
    if code in FINAL_CODES[flavour]:
        state, why = _final_state(flavour, rec, exit_code)
        native = code + (f" Exit_status={exit_code}" if exit_code is not None else "") + (f" {why}" if why else "")
        return NativeStatus(job_id, state, native, exit_code, reason, nodes)
    return NativeStatus(job_id, STATES[flavour].get(code, JobState.UNKNOWN), code or "?", exit_code, reason, nodes)


def _final_state(flavour: str, rec: Mapping[str, str], exit_code: Optional[int]) -> Tuple[JobState, str]:
    if flavour == "pbspro" and rec.get("substate", "").strip() == SUBSTATE_TERMINATED:
        return JobState.CANCELLED, "(deleted)"
    if exit_code is None:
        if flavour == "pbspro" and rec.get("job_state") == "F":
            return JobState.CANCELLED, "(finished without running: deleted while queued)"
        return JobState.COMPLETED, "(exit status not reported)"
    if exit_code == 0:
        return JobState.COMPLETED, ""
    if exit_code < 0:
        name, state = EXIT_NAMES[flavour].get(exit_code, ("", JobState.FAILED))
        return state, name
    if exit_code > SIGNAL_BASE:
        sig = exit_code - SIGNAL_BASE
        what = f"killed by signal {sig}" + (f" ({_SIGNALS[sig]})" if sig in _SIGNALS else "")
        used = _seconds(rec.get("resources_used.walltime", ""))
        limit = _seconds(rec.get("Resource_List.walltime", ""))
        if used is not None and limit is not None and used >= limit:
            return JobState.TIMEOUT, f"({what}: walltime {used} s reached the limit {limit} s)"
        if flavour == "torque":
            return JobState.CANCELLED, f"({what})"  # qdel sends SIGTERM, then SIGKILL
        return JobState.FAILED, f"({what})"  # PBS Pro marks deletions with substate 91 (above)
    return JobState.FAILED, ""


def expand_parent(job_id: str, rec: Mapping[str, str], out: MutableMapping[str, NativeStatus]) -> None:
    """Statuses for the subjobs of array ``job_id`` that qstat did not list one by one."""
    submitted = rec.get("array_indices_submitted") or rec.get("job_array_request") or ""
    remaining_text = rec.get("array_indices_remaining")
    try:
        indices = expand_range(submitted)
        remaining = None if remaining_text is None else set(expand_range(remaining_text))
    except ValueError:
        return
    parent = out[job_id]
    for index in indices:
        task = job_id.replace("[]", f"[{index}]", 1)
        if task in out:
            continue
        if parent.state.is_final:
            out[task] = NativeStatus(task, JobState.COMPLETED, f"{parent.native} (array ended; subjob not listed)")
        elif remaining is None or index in remaining:
            out[task] = NativeStatus(task, JobState.PENDING, "Q (subjob not started)", None, parent.reason)
        else:
            out[task] = NativeStatus(task, JobState.RUNNING, f"{parent.native} (array)", None, parent.reason)


def _seconds(hms: str) -> Optional[int]:
    """``'01:02:03'`` -> 3723; ``'90'`` -> 90; None when it is not a duration."""
    parts = hms.strip().split(":")
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    total = 0
    for p in parts:
        total = total * 60 + int(p)
    return total
