"""``hpcbridge status | logs | cancel | result``: jobs found through the registry, states from the scheduler.

Also what ``submit --wait`` shares with ``result``: waiting for a job with a live line, and printing its outcome.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ..errors import HpcBridgeError
from .output import INTERRUPTED, JOB_FAILED, OK, STILL_RUNNING, CliError, Out, report, state_style


# -- registry-based commands ------------------------------------------------------------------------------------
def _find(job_id: str, site: Optional[str]) -> Tuple[str, List[Dict[str, Any]]]:
    """The site and registry rows of ``job_id``; JobNotFoundError (exit 4) when the registry has none."""
    from ..attaching import find_job

    rows = find_job(job_id, site)
    sites = sorted({r["site"] for r in rows})
    if len(sites) > 1:
        raise CliError(f"job id {job_id} exists on several sites: {', '.join(sites)}", "pick one with --site")
    return sites[0], rows


def _one_task(job_id: str, rows: List[Dict[str, Any]], position: int = 0) -> Dict[str, Any]:
    """The row of one call: ``logs`` and ``result`` need a task (not an array's id) and a bundled call's position."""
    tasks = sorted({r["job_id"] for r in rows})
    if len(tasks) > 1:
        raise CliError(f"job {job_id} is an array of {len(tasks)} tasks", f"give one task, e.g. {tasks[0]}")
    match = [r for r in rows if r["position"] == position]
    if not match:
        raise CliError(f"job {job_id} holds {len(rows)} bundled call(s); --position {position} is not one",
                       f"--position 0 .. {len(rows) - 1}")
    return match[0]


def _backend(site_name: str) -> Any:
    from ..backend import Backend
    from ..sites import load_site

    return Backend(load_site(site_name))


def refresh(rows: List[Dict[str, Any]]) -> Dict[Tuple[str, str], Any]:
    """Ask each site's scheduler about the unfinished rows (one query per site); update rows and the registry.

    Returns ``(site, task id) -> NativeStatus`` for what the schedulers reported.
    """
    from ..registry import Registry
    from ..state import JobState

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
        # PBS requeue (docs/requeue.md): a plain job's warned run may continue in a follow-up job with another id
        live_id = {r["job_id"]: r["job_id"] for r in site_rows}
        if backend.scheduler.requeue_by_follow_up:
            from ..chain import live_links

            plain = [(r["job_id"], r["folder"]) for r in site_rows if r["job_id"] == r["submission_id"]]
            live_id.update(live_links(backend.transport, plain))
        # the submissions, and the follow-up jobs that continue chained ones (not every task id of an array)
        ids = sorted({r["submission_id"] for r in site_rows} | {v for k, v in live_id.items() if v != k})
        statuses = backend.query_status(ids, min(r["submit_time"] for r in site_rows))
        if not statuses:
            continue
        updates = []
        for row in site_rows:
            status = statuses.get(live_id[row["job_id"]])
            if status is None:
                continue
            found[(site_name, row["job_id"])] = status
            if status.state.value != row["last_state"]:
                row["last_state"] = status.state.value
                updates.append((row["job_id"], row["position"], status.state.value))
        registry.update_states(site_name, updates)
    return found


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    from ..display import format_elapsed
    from ..registry import Registry

    rows = Registry().jobs(args.site, limit=1_000_000 if args.all else max(1, args.limit))
    statuses = {} if args.no_refresh else refresh(rows)
    now = time.time()
    if out.json_mode:
        out.json([
            {
                "job_id": r["job_id"], "site": r["site"], "state": r["last_state"], "function": r["function"],
                "position": r["position"], "submitted": r["submit_time"], "folder": r["folder"],
                "nodes": getattr(statuses.get((r["site"], r["job_id"])), "nodes", ""),
                "container": _container(r),
                "attempts": _attempts(r),
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
    headers = ["JOB", "SITE", "STATE", "FUNCTION", "SUBMITTED", "NODES"]
    if any(r.get("container") for r in rows):  # jobs that ran in a container: their image and its digest
        from ..display import image_label

        headers.append("IMAGE")
        for line, r in zip(table, rows):
            line.append(image_label(_container(r)))
    if any(r.get("runs") for r in rows):  # requeued jobs (docs/requeue.md): each run and how it ended
        headers.append("RUNS")
        for line, r in zip(table, rows):
            line.append(", ".join(f"{a.get('nodes') or '-'} {a.get('ended')}" for a in _attempts(r)))
    out.table(headers, table, [state_style(r[2]) for r in table])
    return OK


def _attempts(row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A requeued job's runs as the registry keeps them (docs/requeue.md); [] for any other job."""
    try:
        runs = json.loads(row.get("runs") or "[]")
    except ValueError:
        return []
    return runs if isinstance(runs, list) else []


def _container(row: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A registry row's container record (runtime, binary, image, digest, python), or None."""
    try:
        value = json.loads(row.get("container") or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def cmd_logs(args: argparse.Namespace, out: Out) -> int:
    from ..state import JobState
    from ..store import JobFolder

    site_name, rows = _find(args.job, args.site)
    row = _one_task(args.job, rows)
    backend = _backend(site_name)
    streams = [("out", sys.stdout), ("err", sys.stderr)]
    if args.stdout:
        streams = streams[:1]
    elif args.stderr:
        streams = streams[1:]
    paths = {kind: JobFolder(row["folder"]).log(row["task"], kind) for kind, _ in streams}
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
    from ..registry import Registry
    from ..state import JobState

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
            site_name, rows = _find(job_id, args.site)
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
        to_cancel = list(ids)
        if backend.scheduler.requeue_by_follow_up:
            # PBS requeue (docs/requeue.md): a plain job may live on as a follow-up job with another id (its first
            # run has ended). Mark its folder cancelled first (a warned run then submits no new follow-up, or
            # deletes the one it just submitted), then cancel the chain's newest link
            from ..chain import live_links, mark_cancelled

            plain = [(job_id, rows[0]["folder"]) for rows, job_id in items if rows[0]["submission_id"] == job_id]
            mark_cancelled(backend.transport, [folder for _, folder in plain])
            newest = live_links(backend.transport, plain)
            to_cancel = [newest.get(job_id, job_id) for job_id in ids]
        backend.run_checked(backend.scheduler.cancel_argv(to_cancel), "cancel the job")
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
    from ..attaching import attach

    site_name, rows = _find(args.job, args.site)
    row = _one_task(args.job, rows, args.position)
    job = attach(row["job_id"], site=site_name, position=args.position)
    if not wait_for(job, args.timeout, out):
        return still_running(job, out)
    return print_outcome(job, out)


# -- waiting and outcomes (also submit --wait) ------------------------------------------------------------------
def wait_for(job: Any, timeout: Optional[float], out: Out) -> bool:
    """Wait for ``job`` with a live line on a terminal; True if it finished."""
    import concurrent.futures

    from ..display import format_elapsed

    end = None if timeout is None else time.monotonic() + timeout
    status = None
    if out.err_tty and not out.json_mode:
        from rich.console import Console

        status = Console(stderr=True).status("")
        status.start()
    try:
        while not job.done():
            left = 0.5 if end is None else min(0.5, end - time.monotonic())
            if left <= 0:
                break
            concurrent.futures.wait([job], left)
            if status is not None:
                where = f" on {job.nodes}" if job.nodes else ""
                status.update(f"job {job.job_id} [{state_style(job.state.value)}]{job.state.value}[/]{where} "
                              f"{format_elapsed(job.elapsed)}")
    finally:
        if status is not None:
            status.stop()
    return bool(job.done())


def still_running(job: Any, out: Out, interrupted: bool = False) -> int:
    """The job is not done (``--timeout`` passed, or Ctrl-C: ``interrupted``): say so, and how to go on."""
    if out.json_mode and not interrupted:
        out.json({"job_id": job.job_id, "site": job.site, "state": job.state.value, "done": False})
    report(f"{'interrupted; ' if interrupted else ''}job {job.job_id} is still {job.state.value} (it stays on the "
           f"cluster)", f"hpcbridge result {job.job_id} waits for it; hpcbridge cancel {job.job_id} stops it")
    return INTERRUPTED if interrupted else STILL_RUNNING


def print_outcome(job: Any, out: Out) -> int:
    """A finished job's return value on stdout (repr, or JSON), or its failure as an error; the exit code."""
    import concurrent.futures

    try:
        value = job.result(0)
    except concurrent.futures.CancelledError:
        report(f"job {job.job_id} was cancelled", "")
        return JOB_FAILED
    except BaseException as exc:  # noqa: B036 - the job's exception, shown to the user
        cause = exc.__cause__
        if cause is not None and type(cause).__name__ == "RemoteTraceback":
            print(str(cause).rstrip(), file=sys.stderr)
        text = str(exc).splitlines()[0] if str(exc) else ""
        report(f"job {job.job_id} failed: {type(exc).__name__}: {text}",
               f"hpcbridge logs {job.job_id} shows its output")
        return JOB_FAILED
    if out.json_mode:
        try:
            print(json.dumps(value))
        except (TypeError, ValueError):
            raise CliError(f"the result of job {job.job_id} ({type(value).__name__}) is not JSON-serialisable",
                           "leave out --json to print its repr()") from None
    else:
        print(repr(value))
    return OK
