"""Reading ``qstat``: its ``-f`` text (Torque, the Slurm-backed wrappers) and ``-f -F json`` (PBS Pro) records, its
exit status, and PBS index ranges (pure)."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Mapping, Optional

from ...usage import Measured

#: one job's attributes, flat: ``{"job_state": "R", "Resource_List.walltime": "00:10:00", ...}``
Record = Dict[str, str]

#: qstat's exit status when (some of) the given jobs are unknown: PBSE_UNKJOBID (15001) & 0xff
EXIT_UNKNOWN_JOB = 153
_UNKNOWN_JOB_LINE = re.compile(r"unknown job id|job has finished|does not exist", re.IGNORECASE)
_JSON_PAIR = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*:\s*(.*?)\s*,?$')


def answered(returncode: int, stderr: str) -> bool:
    """Whether a qstat that exited non-zero still answered: it does so when some of the jobs are unknown."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines:
        return all(_UNKNOWN_JOB_LINE.search(line) for line in lines)
    return returncode == EXIT_UNKNOWN_JOB  # the Slurm-backed qstat: none of the jobs, silently


def parse_qstat_text(text: str) -> Dict[str, Record]:
    """``qstat -f`` text (Torque, and the Slurm-backed wrappers): job id -> flat ``{attribute: value}``."""
    jobs: Dict[str, Record] = {}
    current: Optional[Record] = None
    last_key = ""
    for line in text.splitlines():
        head = re.match(r"^Job Id:\s*(\S+)", line)
        if head:
            current = jobs.setdefault(head.group(1), {})
            last_key = ""
            continue
        if current is None:
            continue
        attr = re.match(r"^\s+([A-Za-z_][\w.]*) = (.*)$", line)
        if attr:
            last_key = attr.group(1)
            current[last_key] = attr.group(2).strip()
        elif line.strip() and last_key and line[:1] in ("\t", " "):
            current[last_key] += line.strip()  # a long value wrapped onto the next line
    return jobs


def parse_qstat_json(text: str) -> Dict[str, Record]:
    """``qstat -f -F json`` (PBS Pro): job id -> flat ``{attribute: value}`` (``Resource_List.walltime`` ...).

    PBS Pro has printed invalid JSON for some job environments (unescaped quotes and backslashes, numbers
    with leading zeros: openpbs#1255, #2541); then the output is read line by line, which its layout (one
    attribute per line) allows.
    """
    if not text.strip():
        return {}
    try:
        data = json.loads(text, strict=False)
    except ValueError:
        return _scan_qstat_json(text)
    jobs = data.get("Jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, dict):
        return {}
    return {str(jid): _flatten(job) for jid, job in jobs.items() if isinstance(job, dict)}


def _flatten(job: Mapping[str, object]) -> Record:
    flat: Record = {}
    for key, value in job.items():
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = _scalar(inner)
        else:
            flat[key] = _scalar(value)
    return flat


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return "" if value is None else str(value)


def _scan_qstat_json(text: str) -> Dict[str, Record]:
    jobs: Dict[str, Record] = {}
    depth = 0
    in_jobs = False
    current: Optional[Record] = None
    prefix = ""
    for raw in text.splitlines():
        line = raw.strip()
        pair = _JSON_PAIR.match(line)
        if pair:
            key, value = pair.group(1), pair.group(2)
            if value == "{":
                if depth == 1:
                    in_jobs = key == "Jobs"
                elif depth == 2 and in_jobs:
                    current = jobs.setdefault(key, {})
                elif depth == 3:
                    prefix = f"{key}."
                depth += 1
            elif current is not None and depth in (3, 4):
                current[(prefix if depth == 4 else "") + key] = _json_value(value)
            continue
        if line.startswith("{"):
            depth += 1
        elif line.startswith("}"):
            depth -= 1
            if depth <= 3:
                prefix = ""
            if depth <= 2:
                current = None
    return jobs


def _json_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def expand_range(spec: str) -> List[int]:
    """PBS index ranges: ``'0-4:2,7'`` -> ``[0, 2, 4, 7]`` (an optional ``%N`` limit is ignored)."""
    out: List[int] = []
    for part in spec.split("%", 1)[0].split(","):
        part = part.strip()
        if not part:
            continue
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = int(step_text)
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1, step))
        else:
            out.append(int(part))
    return out


def array_key(job_id: str) -> str:
    """``'123[4].srv'`` and ``'123[].srv'`` -> ``'123[].srv'``."""
    return re.sub(r"\[\d*\]", "[]", job_id, count=1)


def _hms(text: str) -> Optional[float]:
    parts = text.strip().split(":")
    if not text.strip() or not all(p.replace(".", "", 1).isdigit() for p in parts) or len(parts) > 3:
        return None
    total = 0.0
    for p in parts:
        total = total * 60 + float(p)
    return total


def _size_gb(text: str) -> Optional[float]:
    """PBS sizes: ``123456kb``, ``2gb``, ``512mb``, ``100b`` (1024-based) -> GB."""
    m = re.fullmatch(r"(\d+)([kmgtp]?)(b|w)?", text.strip().lower())
    if not m:
        return None
    scale = float(1 << (10 * "bkmgtp".index(m.group(2) or "b")))
    return int(m.group(1)) * scale * (8 if m.group(3) == "w" else 1) / float(1 << 30)


def resources_used(rec: Mapping[str, str], state: str = "") -> Measured:
    """A finished job's ``resources_used.*`` (cput, mem, walltime) and ``Resource_List.*`` (ncpus, nodect,
    walltime, mem) as the "pbs" source; the figures a server does not show are left out (the sampler's serve)."""
    def get(key: str) -> str:
        return rec.get(key, "")

    ncpus = get("Resource_List.ncpus") or get("resources_used.ncpus")
    nodes = get("Resource_List.nodect")
    figures: Dict[str, Any] = {
        "cpu_time_s": _hms(get("resources_used.cput")),
        "peak_mem_gb": _size_gb(get("resources_used.mem")),
        "elapsed_s": _hms(get("resources_used.walltime")),
        "walltime_s": _hms(get("Resource_List.walltime")),
        "cpus": int(ncpus) if ncpus.isdigit() else None,
        "nodes": int(nodes) if nodes.isdigit() else None,
        "mem_gb": _size_gb(get("Resource_List.mem")),
    }
    return Measured("pbs", {k: v for k, v in figures.items() if v is not None}, state)
