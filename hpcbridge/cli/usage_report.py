"""``hpcbridge report [JOB...] [--since 7d] [--site S] [--json]``: what the jobs submitted from here were given
against what they used, per job and in total, with the advice beside each function (docs/usage-advice.md)."""

from __future__ import annotations

import argparse
import re
import time
from datetime import datetime
from typing import Any, Dict, List, Optional

from .output import OK, CliError, Out

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="allocated against used: core-hours, GPU-hours, waste and advice",
                       description="What jobs submitted from here were given against what they used: core-hours "
                       "and GPU-hours allocated, used and wasted per job and in total (failed, cancelled and "
                       "timed-out jobs included), and what each function should ask for next time.")
    p.add_argument("jobs", nargs="*", metavar="JOB", help="job ids (an array's id: all its tasks); default: every "
                   "finished job since --since")
    p.add_argument("--since", default="7d", metavar="SPAN",
                   help="jobs submitted in the last SPAN (30m, 12h, 7d, 2w) or since a date (2026-12-01); "
                   "default 7d")
    p.add_argument("-s", "--site")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)


def since_epoch(text: str, now: float) -> float:
    """``7d`` -> now - 7 days; ``2026-12-01`` (or an ISO time) -> that moment (local time)."""
    m = _SPAN.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise CliError(f"--since {text!r} is neither a span nor a date",
                       "give a span such as 30m, 12h, 7d or 2w, or a date such as 2026-12-01") from None


def rows_for(args: argparse.Namespace, now: float) -> List[Dict[str, Any]]:
    """The registry rows the report covers: the JOBs given, else the jobs submitted since ``--since``."""
    from ..attaching import find_job
    from ..registry import Registry

    if args.jobs:
        rows: List[Dict[str, Any]] = []
        for job in args.jobs:
            rows.extend(find_job(job, args.site))
        return rows
    start = since_epoch(args.since, now)
    return [r for r in Registry().jobs(args.site, limit=1_000_000) if r["submit_time"] >= start]


def cmd_report(args: argparse.Namespace, out: Out) -> int:
    from .. import waste
    from ..advice import advise
    from ..right_size import one_per_task, usages_of_rows
    from ..state import JobState
    from .jobs import refresh

    rows = rows_for(args, time.time())
    refresh(rows)  # states of unfinished jobs first: a job that ended since the last look is counted
    rows = one_per_task(rows)  # bundled calls share their task's allocation: counted once
    finished = [r for r in rows if JobState(r["last_state"]).is_final]
    running = len(rows) - len(finished)
    pairs = usages_of_rows(finished)
    entries = [{"usage": u, "site": r["site"], "function": r["function"]} for r, u in pairs]
    by_fn: Dict[str, List[Any]] = {}
    for entry in entries:
        by_fn.setdefault(entry["function"], []).append(entry["usage"])
    report = waste.build(entries, {fn: advise(us, function=fn) for fn, us in by_fn.items()})
    missing = len(finished) - len(pairs)
    if out.json_mode:
        data = report.as_json()
        data["not_counted"] = {"running": running, "no_usage": missing}
        out.json(data)
        return OK
    if not rows:
        out.human(f"no jobs submitted from here {'with those ids' if args.jobs else 'since ' + args.since}")
        return OK
    out.table(waste.HEADERS, waste.table_rows(report), styles=_styles(report))
    for line in waste.summary_lines(report) + _not_counted(running, missing):
        out.human(line)
    return OK


def _styles(report: Any) -> Optional[List[str]]:
    from .output import state_style

    return [state_style(r.state) for r in report.rows] + ["bold"]


def _not_counted(running: int, missing: int) -> List[str]:
    lines = []
    if running:
        lines.append(f"{running} job{'s' if running != 1 else ''} still running or queued: not counted")
    if missing:
        lines.append(f"{missing} finished job{'s' if missing != 1 else ''} without usage figures (never started, or "
                     "the scheduler and the job folder no longer have them): not counted")
    return lines
