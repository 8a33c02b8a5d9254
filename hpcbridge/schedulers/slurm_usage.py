"""Slurm's figures of finished jobs (pure): one batched ``sacct`` (accounting) or ``scontrol show job`` (without
it) per poll tick, and their parsers into :class:`hpcbridge.usage.Measured`.

sacct pitfalls handled here (docs/usage.md):

- ``ReqMem`` changed in 21.08: before, MB with ``c`` (per CPU) or ``n`` (per node); after, a unit letter and no
  suffix. Both are read, but ``AllocTRES`` ``mem=`` (what was given, whole job) is preferred; ``ReqMem`` serves only
  a job that never started. (On 22.05, a ``--mem-per-cpu=512M`` job of 2 CPUs shows ``ReqMem=512M`` and
  ``AllocTRES mem=1G``.)
- ``TotalCPU`` is ``[D-][HH:]MM:SS[.mmm]``; the job line sums its steps. For a step killed by a signal (scancel,
  timeout) it may miss children's CPU time: a note says so.
- ``MaxRSS``/``TRESUsageIn*`` are per step and only on step lines (``.batch``, ``.extern``, ``.0``...), never on the
  job line; a step shorter than the gathering interval may have none. The job's peak is the largest over its steps.
- ``gres/gpuutil`` in ``TRESUsageInTot`` is a sum of per-GPU percentages (Slurm >= 23.02 with NVML autodetect).
- A requeued job keeps its id: sacct shows only its newest run unless asked ``--duplicates``, which lists every run
  (the job line, then its steps; a requeue resets Submit). The newest run gives the state, the request and the
  elapsed time; the runs before it add their allocation (``earlier_core_s``), CPU time and queue wait.
"""

from __future__ import annotations

import datetime
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..usage import Measured
from .base import Output

USAGE_FIELDS = ("JobID,State,AllocCPUS,NNodes,ElapsedRaw,TotalCPU,AllocTRES,ReqMem,Timelimit,Submit,Start,End,"
                "MaxRSS,TRESUsageInTot,TRESUsageInMax")
KILLED_NOTE = "CPU time from accounting may miss children's CPU time: the job was killed ({state})"
GIB = float(1 << 30)
_UNITS = {"": 1.0, "K": 1024.0, "M": 1024.0 ** 2, "G": 1024.0 ** 3, "T": 1024.0 ** 4, "P": 1024.0 ** 5}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}


def sacct_argv(job_ids: Sequence[str], since_epoch: float, now_epoch: float) -> List[str]:
    """One sacct for the finished jobs ``job_ids`` (an array's id: all its tasks), their steps included."""
    since = f"now-{max(0, int(now_epoch - since_epoch)) + 600}"
    return ["sacct", "--noheader", "--parsable2", "--duplicates", f"--format={USAGE_FIELDS}", f"--starttime={since}",
            f"--jobs={','.join(job_ids)}"]


def scontrol_argv() -> List[str]:
    """Without accounting: every job slurmctld still holds (those that ended less than MinJobAge ago), one line
    each: one command for all."""
    return ["scontrol", "--oneliner", "show", "job"]


def seconds(text: str) -> Optional[float]:
    """``[D-][HH:]MM:SS[.mmm]`` -> seconds; None for ``UNLIMITED``, ``Partition_Limit``, blank."""
    text = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text)
    if not m:
        # Timelimit in minutes only, as some sites print it
        return float(text) * 60 if text.isdigit() else None
    days, hours, minutes, secs = m.groups()
    if days and hours is None:  # D-HH:MM: days, hours, minutes (no seconds)
        return int(days) * 86400 + int(minutes) * 3600 + float(secs) * 60
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)


def size_bytes(text: str) -> Optional[float]:
    """``4800K``, ``1G``, ``1.50G``, ``256M`` (1024-based) -> bytes; None for blank."""
    m = re.fullmatch(r"([\d.]+)([KMGTP]?)", text.strip().upper())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def req_mem_gb(text: str, nodes: int, cpus: int) -> Optional[float]:
    """``ReqMem`` in both formats: ``1000Mn`` (per node), ``500Mc`` (per CPU) before 21.08; ``1G`` after."""
    m = re.fullmatch(r"([\d.]+[KMGTP]?)([cn]?)", text.strip())
    if not m:
        return None
    size = size_bytes(m.group(1))
    if size is None:
        return None
    factor = {"c": cpus, "n": nodes}.get(m.group(2), 1)
    return size * factor / GIB


def tres(text: str) -> Dict[str, str]:
    """``cpu=2,mem=1G,node=1,gres/gpu=1`` -> a dict."""
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def gpu_count(alloc: Mapping[str, str]) -> int:
    """``gres/gpu=2``, or the typed ``gres/gpu:a100=2`` entries summed when the plain one is absent."""
    if "gres/gpu" in alloc:
        return int(float(alloc["gres/gpu"]))
    return sum(int(float(v)) for k, v in alloc.items() if k.startswith("gres/gpu:"))


def _time(text: str) -> Optional[datetime.datetime]:
    try:
        return datetime.datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None  # Unknown, None


def queue_wait(submit: str, start: str) -> Optional[float]:
    a, b = _time(submit), _time(start)
    return None if a is None or b is None else max(0.0, (b - a).total_seconds())


def _base_state(native: str) -> str:
    return native.strip().split(" ", 1)[0].rstrip("+")


def parse_sacct(out: Output) -> Dict[str, Tuple[Measured, bool]]:
    """task id -> (its figures, complete): complete once the job line is final with an end time (slurmdbd may
    show the end a moment after slurmctld; ask again until then)."""
    if out.returncode != 0:
        return {}
    header = USAGE_FIELDS.split(",")
    # task id -> its runs (``--duplicates``: each job line, then that run's steps)
    runs: Dict[str, List[Tuple[Dict[str, str], List[Dict[str, str]]]]] = {}
    for line in out.stdout.splitlines():
        parts = line.rstrip("\n").split("|")
        if len(parts) < len(header) or not parts[0]:
            continue
        row = dict(zip(header, parts))
        job_id, _, step = row["JobID"].partition(".")
        if not step:
            runs.setdefault(job_id, []).append((row, []))
        elif runs.get(job_id):
            runs[job_id][-1][1].append(row)
    answer: Dict[str, Tuple[Measured, bool]] = {}
    for job_id, its in runs.items():
        its.sort(key=lambda run: (run[0]["Submit"], run[0]["Start"]))  # a requeue resets Submit
        answer[job_id] = _all_runs([_measured(row, steps) for row, steps in its])
    return answer


def _all_runs(runs: Sequence[Tuple[Measured, bool]]) -> Tuple[Measured, bool]:
    """A job's figures over its runs, oldest first: the newest run's, plus the earlier runs' allocation
    (``earlier_core_s``, ``earlier_gpu_s``), CPU time and queue wait; the largest peaks of all."""
    last, complete = runs[-1]
    if len(runs) == 1:
        return last, complete
    figures = dict(last.figures)
    earlier = [m.figures for m, _ in runs[:-1]]
    figures["runs"] = len(runs)
    figures["earlier_core_s"] = sum(f.get("cpus", 0) * f.get("elapsed_s", 0.0) for f in earlier)
    figures["earlier_gpu_s"] = sum(f.get("gpus", 0) * f.get("elapsed_s", 0.0) for f in earlier)
    for name in ("cpu_time_s", "queue_wait_s"):
        known = [f[name] for f in [*earlier, last.figures] if f.get(name) is not None]
        if known:
            figures[name] = sum(known)
    for name in ("peak_mem_gb", "gpu_mem_peak_gb"):
        known = [f[name] for f in [*earlier, last.figures] if f.get(name) is not None]
        if known:
            figures[name] = max(known)
    notes = list(last.notes)
    return Measured(last.source, figures, last.state, tuple(notes)), complete


def _measured(row: Mapping[str, str], steps: Sequence[Mapping[str, str]]) -> Tuple[Measured, bool]:
    state = _base_state(row["State"])
    alloc = tres(row["AllocTRES"])
    nodes = int(row["NNodes"]) if row["NNodes"].isdigit() else None
    cpus = int(row["AllocCPUS"]) if row["AllocCPUS"].isdigit() and int(row["AllocCPUS"]) else None
    mem = alloc.get("mem")
    mem_gb = size_bytes(mem) / GIB if mem and size_bytes(mem) is not None else None  # type: ignore[operator]
    if mem_gb is None and row["ReqMem"]:
        mem_gb = req_mem_gb(row["ReqMem"], nodes or 1, cpus or 1)
    cpu_time = seconds(row["TotalCPU"])
    step_cpu = [seconds(s["TotalCPU"]) for s in steps]
    if not cpu_time and any(step_cpu):
        cpu_time = sum(c for c in step_cpu if c)
    peaks: List[float] = []
    gpu_util: Optional[float] = None
    gpu_mem: List[float] = []
    gpus = gpu_count(alloc)
    for s in steps:
        step_nodes = int(s["NNodes"]) if s["NNodes"].isdigit() and int(s["NNodes"]) else 1
        tot, mx = tres(s["TRESUsageInTot"]), tres(s["TRESUsageInMax"])
        candidates = [size_bytes(s["MaxRSS"]), size_bytes(mx.get("mem", ""))]
        total = size_bytes(tot.get("mem", ""))
        if total is not None:
            candidates.append(total / step_nodes)
        known = [c for c in candidates if c is not None]
        if known:
            peaks.append(max(known) / GIB)
        if "gres/gpuutil" in tot and gpus:
            util = float(tot["gres/gpuutil"]) / 100 / gpus
            gpu_util = util if gpu_util is None else max(gpu_util, util)
        if "gres/gpumem" in mx:
            got = size_bytes(mx["gres/gpumem"])
            if got is not None:
                gpu_mem.append(got / GIB)
    elapsed = float(row["ElapsedRaw"]) if row["ElapsedRaw"].isdigit() else None
    started = _time(row["Start"]) is not None
    figures = {
        "nodes": nodes,
        "cpus": cpus,
        "mem_gb": mem_gb,
        "walltime_s": seconds(row["Timelimit"]),
        "gpus": gpus if alloc else None,
        "elapsed_s": elapsed if started else None,
        "queue_wait_s": queue_wait(row["Submit"], row["Start"]),
        "cpu_time_s": cpu_time if started else None,
        "peak_mem_gb": max(peaks) if peaks else None,
        "gpu_utilization": gpu_util,
        "gpu_mem_peak_gb": max(gpu_mem) if gpu_mem else None,
    }
    notes = (KILLED_NOTE.format(state=state),) if state in ("CANCELLED", "TIMEOUT") and started else ()
    complete = state in FINAL and (_time(row["End"]) is not None or not started)
    return Measured("accounting", {k: v for k, v in figures.items() if v is not None}, state, notes), complete


def parse_scontrol(out: Output) -> Dict[str, Tuple[Measured, bool]]:
    """``scontrol --oneliner show job`` (accounting off): the allocation, the walltime, the times; no CPU time
    or memory (the sampler gives those). Array tasks are keyed ``ARRAY_TASK``."""
    if out.returncode != 0:
        return {}
    answer: Dict[str, Tuple[Measured, bool]] = {}
    for line in out.stdout.splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "JobId" not in fields:
            continue
        task_id = fields["JobId"]
        if fields.get("ArrayTaskId", "").isdigit() and fields.get("ArrayJobId"):
            task_id = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        state = _base_state(fields.get("JobState", ""))
        alloc = tres(fields.get("TRES", ""))
        mem = size_bytes(alloc.get("mem", ""))
        started = _time(fields.get("StartTime", "")) is not None and state != "PENDING"
        figures = {
            "nodes": int(fields["NumNodes"]) if fields.get("NumNodes", "").isdigit() else None,
            "cpus": int(fields["NumCPUs"]) if fields.get("NumCPUs", "").isdigit() else None,
            "mem_gb": None if mem is None else mem / GIB,
            "walltime_s": seconds(fields.get("TimeLimit", "")),
            "gpus": gpu_count(alloc) if alloc else None,
            "elapsed_s": seconds(fields.get("RunTime", "")) if started else None,
            "queue_wait_s": queue_wait(fields.get("SubmitTime", ""), fields.get("StartTime", "")) if started else None,
        }
        complete = state in FINAL
        answer[task_id] = (Measured("scontrol", {k: v for k, v in figures.items() if v is not None}, state),
                           complete)
    return answer
