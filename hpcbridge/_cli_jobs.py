"""``hpcbridge status | logs | cancel | result``: jobs found through the registry, states from the scheduler."""

from __future__ import annotations

import argparse
import codecs
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ._cli_base import (
    NOT_FOUND,
    OK,
    CliError,
    Out,
    state_style,
)
from .errors import HpcBridgeError


# -- registry-based commands ------------------------------------------------------------------------------------
def _lookup(job_id: str, site: Optional[str]) -> Tuple[str, List[Dict[str, Any]]]:
    from .registry import Registry

    rows = Registry().lookup(job_id, site)
    if not rows:
        where = f" of site {site!r}" if site else ""
        raise CliError(f"no job {job_id}{where} in this machine's registry",
                       "`hpcbridge status` lists the jobs submitted from here", NOT_FOUND)
    sites = sorted({r["site"] for r in rows})
    if len(sites) > 1:
        raise CliError(f"job id {job_id} exists on several sites: {', '.join(sites)}", "pick one with --site")
    return sites[0], rows


def _one_task(job_id: str, rows: List[Dict[str, Any]], position: int = 0) -> Dict[str, Any]:
    tasks = sorted({r["job_id"] for r in rows})
    if len(tasks) > 1:
        raise CliError(f"job {job_id} is an array of {len(tasks)} tasks", f"give one task, e.g. {tasks[0]}")
    match = [r for r in rows if r["position"] == position]
    if not match:
        raise CliError(f"job {job_id} holds {len(rows)} bundled call(s); --position {position} is not one",
                       f"--position 0 .. {len(rows) - 1}")
    return match[0]


def _backend(site_name: str) -> Any:
    from .backend import Backend
    from .sites import load_site

    return Backend(load_site(site_name))


def refresh(rows: List[Dict[str, Any]]) -> Dict[Tuple[str, str], Any]:
    """Ask each site's scheduler about the unfinished rows (one query per site); update rows and the registry.

    Returns ``(site, task id) -> NativeStatus`` for what the schedulers reported.
    """
    from .registry import Registry
    from .state import JobState

    live: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if not JobState(row["last_state"]).is_final:
            live.setdefault(row["site"], []).append(row)
    found: Dict[Tuple[str, str], Any] = {}
    registry = Registry()
    for site_name, site_rows in live.items():
        try:
            backend = _backend(site_name)
        except HpcBridgeError:
            continue  # the site-config is gone or broken: show what was recorded
        ids = sorted({r["submission_id"] for r in site_rows})
        statuses = backend.query_status(ids, min(r["submit_time"] for r in site_rows))
        if not statuses:
            continue
        updates = []
        for row in site_rows:
            status = statuses.get(row["job_id"])
            if status is None:
                continue
            found[(site_name, row["job_id"])] = status
            if status.state.value != row["last_state"]:
                row["last_state"] = status.state.value
                updates.append((row["job_id"], row["position"], status.state.value))
        registry.update_states(site_name, updates)
    return found


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    from .display import format_elapsed
    from .registry import Registry

    rows = Registry().jobs(args.site, limit=1_000_000 if args.all else max(1, args.limit))
    statuses = {} if args.no_refresh else refresh(rows)
    now = time.time()
    if out.json_mode:
        out.json([
            {
                "job_id": r["job_id"], "site": r["site"], "state": r["last_state"], "function": r["function"],
                "position": r["position"], "submitted": r["submit_time"], "folder": r["folder"],
                "nodes": getattr(statuses.get((r["site"], r["job_id"])), "nodes", ""),
            }
            for r in rows
        ])
        return OK
    if not rows:
        out.human("no jobs yet [dim](hpcbridge submit ... records them here)[/dim]")
        return OK
    table = []
    for r in rows:
        job = r["job_id"] + (f"#{r['position']}" if r["position"] else "")
        when = (format_elapsed(now - r["submit_time"]) + " ago") if out.tty else time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.localtime(r["submit_time"]))
        nodes = getattr(statuses.get((r["site"], r["job_id"])), "nodes", "")
        table.append([job, r["site"], r["last_state"], r["function"], when, nodes if nodes != "None assigned" else ""])
    out.table(["JOB", "SITE", "STATE", "FUNCTION", "SUBMITTED", "NODES"], table,
              [state_style(r[2]) for r in table])
    return OK


def cmd_logs(args: argparse.Namespace, out: Out) -> int:
    from .state import JobState

    site_name, rows = _lookup(args.job, args.site)
    row = _one_task(args.job, rows)
    backend = _backend(site_name)
    streams = [("out", sys.stdout), ("err", sys.stderr)]
    if args.stdout:
        streams = streams[:1]
    elif args.stderr:
        streams = streams[1:]
    paths = {kind: f"{row['folder']}/log/{row['task']}.{kind}" for kind, _ in streams}
    if not args.follow:
        for kind, stream in streams:
            data = backend.transport.read_tail(paths[kind], 1 << 22)
            stream.write((data or b"").decode("utf-8", "replace"))
            stream.flush()
        return OK
    printed = {kind: 0 for kind, _ in streams}
    final = False
    next_check = 0.0
    decoders = {kind: codecs.getincrementaldecoder("utf-8")("replace") for kind, _ in streams}
    while True:
        for kind, stream in streams:
            # only what is new: a long job's log is not read again from its start every half second
            data = backend.transport.read_from(paths[kind], printed[kind]) or b""
            if data:
                stream.write(decoders[kind].decode(data))  # a character split across two reads stays whole
                stream.flush()
                printed[kind] += len(data)
        if final:
            for kind, stream in streams:
                stream.write(decoders[kind].decode(b"", final=True))  # a cut-off last character: U+FFFD
                stream.flush()
            return OK
        if time.monotonic() >= next_check:
            rows_now = [dict(row)]
            refresh(rows_now)
            final = JobState(rows_now[0]["last_state"]).is_final
            next_check = time.monotonic() + 2.0
            if final:
                time.sleep(1.0)  # the last lines reach the shared filesystem
                continue
        time.sleep(0.5)


def cmd_cancel(args: argparse.Namespace, out: Out) -> int:
    from .registry import Registry
    from .state import JobState

    if bool(args.jobs) == bool(args.all):
        raise CliError("give job ids or --all (not both)", "hpcbridge cancel 123 456, or hpcbridge cancel --all")
    targets: List[Tuple[str, List[Dict[str, Any]], str]] = []
    if args.all:
        rows = Registry().jobs(args.site, limit=1_000_000)
        rows = [r for r in rows if not JobState(r["last_state"]).is_final]
        refresh(rows)
        by_sub: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
        for r in rows:
            if not JobState(r["last_state"]).is_final:
                by_sub.setdefault((r["site"], r["submission_id"]), []).append(r)
        for (site_name, sub_id), sub_rows in by_sub.items():
            targets.append((site_name, sub_rows, sub_id))
    else:
        for job_id in args.jobs:
            site_name, rows = _lookup(job_id, args.site)
            refresh(rows)
            live = [r for r in rows if not JobState(r["last_state"]).is_final]
            if not live:
                states = ", ".join(sorted({r["last_state"] for r in rows}))
                out.human(f"job {job_id} already ended ({states})")
                continue
            targets.append((site_name, live, job_id))
    cancelled: List[Dict[str, str]] = []
    by_site: Dict[str, List[Tuple[List[Dict[str, Any]], str]]] = {}
    for site_name, rows, job_id in targets:
        by_site.setdefault(site_name, []).append((rows, job_id))
    for site_name, items in by_site.items():
        backend = _backend(site_name)
        ids = [job_id for _, job_id in items]
        backend.run_checked(backend.scheduler.cancel_argv(ids), "cancel the job")
        updates = [(r["job_id"], r["position"], "CANCELLED") for rows, _ in items for r in rows]
        Registry().update_states(site_name, updates)
        cancelled += [{"job_id": job_id, "site": site_name} for job_id in ids]
    if out.json_mode:
        out.json(cancelled)
    elif out.tty:
        for c in cancelled:
            out.human(f"cancelled job {c['job_id']} (site {c['site']!r})")
        if not cancelled and args.all:
            out.human("no unfinished jobs")
    else:
        for c in cancelled:
            out.line(c["job_id"])
    return OK


def cmd_result(args: argparse.Namespace, out: Out) -> int:
    from ._cli_submit import _print_outcome, _still_running, wait_for
    from .executor import attach

    site_name, rows = _lookup(args.job, args.site)
    row = _one_task(args.job, rows, args.position)
    job = attach(row["job_id"], site=site_name, position=args.position)
    if not wait_for(job, args.timeout, out):
        return _still_running(job, out)
    return _print_outcome(job, out)
