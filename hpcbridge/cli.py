"""The ``hpcbridge`` command: submit, status, logs, cancel, result, render, sites.

Exit codes (docs/cli.md): 0 ok; 1 the job failed; 2 bad input or site-config (nothing was submitted); 3 the
scheduler, the connection or the cluster-side python failed; 4 no such job; 5 still running when the wait timed
out; 130 interrupted. A user error prints one line and a hint on stderr, not a traceback (``--debug`` shows it).
On a terminal output is a rich table; piped, it is tab-separated without a header (``--json`` for programs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .errors import (
    CommandError,
    ConfigError,
    HpcBridgeError,
    JobError,
    RemoteEnvironmentError,
    ResourceError,
    SerializationError,
    TransportError,
    UnknownSiteError,
)

OK, JOB_FAILED, USAGE, SCHEDULER, NOT_FOUND, STILL_RUNNING, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 4, 5, 70, 130


class CliError(Exception):
    """A user-facing error: one line, a hint, an exit code."""

    def __init__(self, message: str, hint: str = "", code: int = USAGE) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


# -- output -----------------------------------------------------------------------------------------------------
class Out:
    """Rich on a terminal; plain, tab-separated and header-less when piped; JSON on request."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.tty = _isatty(sys.stdout)
        self.err_tty = _isatty(sys.stderr)
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def human(self, text: str) -> None:
        """A message for people: printed on a terminal only."""
        if self.tty and not self.json_mode:
            self.console.print(text)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=1 if self.tty else None, default=str), flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], styles: Optional[List[str]] = None) -> None:
        if not self.tty:
            for row in rows:
                print("\t".join(str(c) for c in row))
            sys.stdout.flush()
            return
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for header in headers:
            table.add_column(header)
        for i, row in enumerate(rows):
            table.add_row(*[str(c) for c in row], style=(styles[i] if styles else None))
        self.console.print(table)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


STATE_STYLES = {
    "PENDING": "yellow",
    "RUNNING": "blue",
    "COMPLETED": "green",
    "UNKNOWN": "dim",
}


def state_style(state: str) -> str:
    return STATE_STYLES.get(state, "red")


# -- parser -----------------------------------------------------------------------------------------------------
def _resource_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("resources (override the site's defaults)")
    g.add_argument("-N", "--nodes", type=int, metavar="N")
    g.add_argument("--tasks-per-node", type=int, metavar="N")
    g.add_argument("-c", "--cpus-per-task", type=int, metavar="N")
    g.add_argument("-G", "--gpus-per-node", type=int, metavar="N")
    g.add_argument("--mem", dest="mem_gb", metavar="GB", help="memory per node: GB, or with a unit (512MB, 4G)")
    g.add_argument("-t", "--time", dest="walltime", metavar="TIME", help="minutes, HH:MM:SS or D-HH:MM:SS")
    g.add_argument("-p", "--partition")
    g.add_argument("-A", "--account")
    g.add_argument("-q", "--qos")
    g.add_argument("-J", "--name", help="job name")
    g.add_argument("--launcher", choices=("srun", "mpirun", "torchrun"))
    g.add_argument("--directive", dest="extra_directives", action="append", metavar="OPT",
                   help="extra scheduler option, e.g. --directive=--constraint=a100 (repeatable)")


RESOURCE_DESTS = ("nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb", "walltime", "partition",
                  "account", "qos", "name", "launcher", "extra_directives")


def build_parser() -> argparse.ArgumentParser:
    from . import _cli_sites

    parser = argparse.ArgumentParser(
        prog="hpcbridge",
        description="Run Python functions, Python files and commands as batch jobs (Slurm, PBS, local).",
        epilog="Exit codes: 0 ok, 1 job failed, 2 bad input, 3 scheduler/connection, 4 no such job, "
        "5 still running, 130 interrupted. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"hpcbridge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for name, helptext in (("submit", "submit a job"), ("render", "print the batch script, submit nothing")):
        p = sub.add_parser(name, help=helptext, description=f"{helptext.capitalize()}: TARGET is a Python file "
                           "(train.py), module:function (pkg.mod:main), or -- followed by a command.")
        p.add_argument("target", nargs="?", help="FILE.py or module:function (arguments follow; or -- CMD ...)")
        p.add_argument("args", nargs="*", help="arguments (strings) for the file or function")
        p.add_argument("-s", "--site", help="site name (default: $HPCBRIDGE_SITE, hpcbridge.toml, local)")
        _resource_flags(p)
        if name == "submit":
            p.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")
            p.add_argument("-w", "--wait", action="store_true", help="wait for the job, then show its outcome")
            p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S seconds")
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=cmd_submit if name == "submit" else cmd_render)

    p = sub.add_parser("status", help="jobs submitted from this machine, with live states")
    p.add_argument("-s", "--site")
    p.add_argument("-n", "--limit", type=int, default=50, help="most recent N jobs (default 50)")
    p.add_argument("-a", "--all", action="store_true", help="every job in the registry")
    p.add_argument("--no-refresh", action="store_true", help="show the recorded states, ask no scheduler")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="a job's output")
    p.add_argument("job", help="job id (123 or 123_4 for an array task)")
    p.add_argument("-s", "--site")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stdout", action="store_true", help="standard output only")
    which.add_argument("--stderr", action="store_true", help="standard error only")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel jobs")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("-s", "--site")
    p.add_argument("-a", "--all", action="store_true", help="every unfinished job of the site (or of all sites)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("result", help="a job's return value (waits for it)")
    p.add_argument("job")
    p.add_argument("-s", "--site")
    p.add_argument("--position", type=int, default=0, help="which bundled call (map_jobs chunksize > 1)")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 5)")
    p.add_argument("--json", action="store_true", help="print the value as JSON")
    p.set_defaults(func=cmd_result)

    _cli_sites.add_parser(sub)
    return parser


# -- main -------------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    after: Optional[List[str]] = None
    if "--" in argv:
        i = argv.index("--")
        argv, after = argv[:i], argv[i + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.after = after
    if after is not None and args.command not in ("submit", "render"):
        parser.error(f"'--' is only for `submit` and `render`, not `{args.command}`")
    out = Out(json_mode=bool(getattr(args, "json", False)))
    try:
        code: int = args.func(args, out)
        return code
    except KeyboardInterrupt:
        print("hpcbridge: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        return OK
    except (CliError, HpcBridgeError) as exc:
        if args.debug:
            raise
        message, hint, code = explain(exc, args)
        _report(message, hint)
        return code
    except Exception as exc:
        if args.debug:
            raise
        _report(f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug for the traceback, and report it")
        return INTERNAL


def _report(message: str, hint: str) -> None:
    print(f"hpcbridge: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def explain(exc: BaseException, args: argparse.Namespace) -> Tuple[str, str, int]:
    """One line, a hint and an exit code for an error."""
    site = getattr(args, "site", None) or "SITE"
    if isinstance(exc, CliError):
        return str(exc), exc.hint, exc.code
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, UnknownSiteError):
        return first, "`hpcbridge sites list` shows the sites this machine knows", USAGE
    if isinstance(exc, ConfigError):
        return first, "`hpcbridge sites check` validates every site-config (docs/site-configs.md)", USAGE
    if isinstance(exc, ResourceError):
        return first, f"`hpcbridge sites show {site}` lists the partitions and their limits", USAGE
    if isinstance(exc, SerializationError):
        return first, "the function and its arguments must be picklable", USAGE
    if isinstance(exc, RemoteEnvironmentError):
        return first, f"fix the site's `python` (hpcbridge sites show {site} --origin says where it is set)", SCHEDULER
    if isinstance(exc, CommandError):
        detail = exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else f"exit code {exc.exit_code}"
        return f"{exc.message}: {detail}", f"the command was: {' '.join(exc.argv)}", SCHEDULER
    if isinstance(exc, TransportError):
        return first, "check that the cluster is reachable (hpcbridge sites show SITE for its connection)", SCHEDULER
    if isinstance(exc, JobError):
        return first, "`hpcbridge logs JOB` shows its output", JOB_FAILED
    return first, "", JOB_FAILED


# -- targets ----------------------------------------------------------------------------------------------------
def resolve_target(args: argparse.Namespace) -> Tuple[Callable[..., Any], List[Any], str]:
    """``(callable, arguments, kind)`` for ``submit``/``render``: kind is command, file or function."""
    from . import _tasks

    after = args.after
    if args.target is None:
        if not after:
            raise CliError(
                "nothing to run: give a Python file, module:function, or a command after --",
                "e.g. hpcbridge submit train.py, hpcbridge submit mypkg.jobs:main, hpcbridge submit -- hostname",
            )
        return _tasks.run_command, [list(after)], "command"
    extra = list(args.args) + list(after or [])
    target: str = args.target
    if target.endswith(".py") or (os.path.isfile(target) and ":" not in target):
        try:
            with open(target, encoding="utf-8") as fh:
                source = fh.read()
        except OSError as exc:
            raise CliError(f"cannot read {target}: {exc.strerror or exc}", "give the path of a Python file") from None
        try:
            compile(source, target, "exec")
        except SyntaxError as exc:
            raise CliError(f"{target}:{exc.lineno}: {exc.msg}", "the file must be valid Python") from None
        return _tasks.run_script, [os.path.abspath(target), source, extra], "file"
    if ":" in target:
        return _load_function(target), extra, "function"
    raise CliError(
        f"{target!r} is not a Python file or module:function",
        f"to run a command, put it after --: hpcbridge {args.command} -- {target} {' '.join(extra)}".rstrip(),
    )


def _load_function(target: str) -> Callable[..., Any]:
    import importlib

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CliError(f"{target!r} must be module:function", "e.g. mypkg.jobs:main")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(
            f"cannot import {module_name!r}: {exc}", "run from the folder that holds it, or install it"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            from .spec import did_you_mean

            names = [n for n in dir(obj) if not n.startswith("_")]
            raise CliError(f"{module_name} has no {attr!r}{did_you_mean(part, names)}",
                           f"callables there: {', '.join(n for n in names if callable(getattr(obj, n)))[:200]}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CliError(f"{target} is not callable", "give a function")
    module_file = os.path.abspath(getattr(module, "__file__", "") or "")
    if module_file.startswith(os.getcwd() + os.sep) and "site-packages" not in module_file:
        import cloudpickle  # a module of this folder need not be installed on the cluster: ship it by value

        cloudpickle.register_pickle_by_value(module)
    return obj  # type: ignore[no-any-return]


def _executor(args: argparse.Namespace) -> Any:
    from .executor import Executor
    from .sites import default_site

    resources = {k: getattr(args, k) for k in RESOURCE_DESTS if getattr(args, k, None) is not None}
    args.site = args.site or default_site()
    return Executor(site=args.site, **resources)


# -- submit / render --------------------------------------------------------------------------------------------
def cmd_render(args: argparse.Namespace, out: Out) -> int:
    fn, fargs, _ = resolve_target(args)
    ex = _executor(args)
    sys.stdout.write(ex.render(fn, *fargs))
    return OK


def cmd_submit(args: argparse.Namespace, out: Out) -> int:
    fn, fargs, kind = resolve_target(args)
    ex = _executor(args)
    if args.dry_run:
        sys.stdout.write(ex.render(fn, *fargs))
        return OK
    job = ex.submit(fn, *fargs)
    if not args.wait:
        if out.json_mode:
            out.json({"job_id": job.job_id, "site": job.site})
        elif out.tty:
            out.human(f"submitted job [bold]{job.job_id}[/bold] to site {job.site!r}")
            out.human(f"[dim]follow it: hpcbridge logs {job.job_id} -f   result: hpcbridge result {job.job_id}[/dim]")
        else:
            out.line(job.job_id)
        return OK
    if not out.json_mode and out.err_tty:
        print(f"submitted job {job.job_id} to site {job.site!r}", file=sys.stderr)
    if not wait_for(job, args.timeout, out):
        return _still_running(job, out)
    if kind in ("command", "file"):
        return _relay(job, out)
    return _print_outcome(job, out)


def wait_for(job: Any, timeout: Optional[float], out: Out) -> bool:
    """Wait for ``job`` with a live line on a terminal; True if it finished."""
    import concurrent.futures

    from .display import format_elapsed

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


def _still_running(job: Any, out: Out) -> int:
    if out.json_mode:
        out.json({"job_id": job.job_id, "site": job.site, "state": job.state.value, "done": False})
    _report(f"job {job.job_id} is still {job.state.value} (it stays on the cluster)",
            f"hpcbridge result {job.job_id} waits for it; hpcbridge cancel {job.job_id} stops it")
    return STILL_RUNNING


def _relay(job: Any, out: Out) -> int:
    """A command's or script's job is done: its output here, its exit status as ours."""
    from ._tasks import CommandFailed

    sys.stdout.write(job.stdout())
    sys.stdout.flush()
    sys.stderr.write(_without_worker_report(job.stderr()))
    exc = job.exception() if not job.cancelled() else None
    if job.cancelled():
        _report(f"job {job.job_id} was cancelled", "")
        return JOB_FAILED
    if exc is None:
        return OK
    if isinstance(exc, CommandFailed):
        return exc.returncode if 0 < exc.returncode < 256 else JOB_FAILED
    _report(f"job {job.job_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            f"hpcbridge logs {job.job_id} shows its output")
    return JOB_FAILED


def _without_worker_report(text: str) -> str:
    """A command's stderr without the worker's own traceback of CommandFailed (its exit status says it)."""
    marker = "Traceback (most recent call last):"
    cut = text.rfind(marker)
    tail = text[cut:] if cut >= 0 else ""
    if "hpcbridge._tasks.CommandFailed: " in tail and tail.rstrip().endswith("call(s) raised (rank 0)"):
        return text[:cut]
    return text


def _print_outcome(job: Any, out: Out) -> int:
    import concurrent.futures

    try:
        value = job.result(0)
    except concurrent.futures.CancelledError:
        _report(f"job {job.job_id} was cancelled", "")
        return JOB_FAILED
    except BaseException as exc:  # noqa: B036 - the job's exception, shown to the user
        cause = exc.__cause__
        if cause is not None and type(cause).__name__ == "RemoteTraceback":
            print(str(cause).rstrip(), file=sys.stderr)
        text = str(exc).splitlines()[0] if str(exc) else ""
        _report(f"job {job.job_id} failed: {type(exc).__name__}: {text}",
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
    while True:
        blobs = backend.transport.read_files(list(paths.values()))
        for kind, stream in streams:
            data = blobs.get(paths[kind], b"")
            if len(data) > printed[kind]:
                stream.write(data[printed[kind]:].decode("utf-8", "replace"))
                stream.flush()
                printed[kind] = len(data)
        if final:
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
    from .executor import attach

    site_name, rows = _lookup(args.job, args.site)
    row = _one_task(args.job, rows, args.position)
    job = attach(row["job_id"], site=site_name, position=args.position)
    if not wait_for(job, args.timeout, out):
        return _still_running(job, out)
    return _print_outcome(job, out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
