"""The ``hpcbridge`` command: submit, status, logs, cancel, result, render, sites, report.

Exit codes (docs/cli.md): 0 ok; 1 the job failed; 2 bad input or site-config (nothing was submitted); 3 the
scheduler, the connection or the cluster-side python failed; 4 no such job; 5 still running when the wait timed
out; 130 interrupted. A user error prints one line and a hint on stderr, not a traceback (``--debug`` shows it).
On a terminal output is a rich table; piped, it is tab-separated without a header (``--json`` for programs).

This module holds the parser, ``main`` and the one mapping of errors to exit codes; the commands live in ``jobs``
(status, logs, cancel, result), ``submit`` (submit, render), ``sites`` (sites ...) and ``usage_report``
(report), and what they share in ``output`` (exit codes, ``CliError``, printing).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence, Tuple

from .._version import __version__
from ..errors import (
    CommandError,
    ConfigError,
    ContainerError,
    HpcBridgeError,
    JobError,
    JobNotFoundError,
    RemoteEnvironmentError,
    ResourceError,
    SerializationError,
    TransportError,
    UnknownSiteError,
    UsageError,
)
from ..spec import CONTAINER_RUNTIMES
from . import sites
from .jobs import cmd_cancel, cmd_logs, cmd_result, cmd_status
from .output import INTERNAL, INTERRUPTED, JOB_FAILED, NOT_FOUND, OK, SCHEDULER, USAGE, CliError, Out, report
from .submit import cmd_render, cmd_submit
from .usage_report import add_parser as add_report_parser


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
    g.add_argument("--container", metavar="IMAGE", help="run in this container image (docs/containers.md)")
    g.add_argument("--bind", dest="container_binds", action="append", metavar="SRC[:DST[:OPTS]]",
                   help="bind mount for the container (repeatable)")
    g.add_argument("--container-runtime", choices=CONTAINER_RUNTIMES,
                   help="the container runtime (default: the site-config's [container] runtime)")
    g.add_argument("--container-env", action="append", metavar="NAME",
                   help="a variable (or PREFIX*) the container may see besides the allow-list (repeatable)")
    g.add_argument("--requeue", type=int, metavar="N",
                   help="requeue the job after a warning (walltime, preemption) or a node failure, at most N times; "
                   "a command is restarted from scratch (docs/requeue.md)")
    g.add_argument("--signal-grace", dest="signal_grace_s", type=int, metavar="S",
                   help="with --requeue: warn the job S seconds before its end")
    g.add_argument("--restartable", action="store_true", default=None,
                   help="with --requeue: a function or file that saved no checkpoint restarts from scratch")


def build_parser() -> argparse.ArgumentParser:
    """The ``hpcbridge`` parser: each subcommand's ``func`` is the ``cmd_*`` of the module that owns it."""
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

    sites.add_parser(sub)
    add_report_parser(sub)
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
    except HpcBridgeError as exc:  # CliError too
        if args.debug:
            raise
        message, hint, code = explain(exc, args)
        report(message, hint)
        return code
    except Exception as exc:
        if args.debug:
            raise
        report(f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug for the traceback, and report it")
        return INTERNAL


def explain(exc: BaseException, args: argparse.Namespace) -> Tuple[str, str, int]:
    """One line, a hint and an exit code for an error."""
    site = getattr(args, "site", None) or "SITE"
    if isinstance(exc, CliError):
        return str(exc), exc.hint, exc.code
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, JobNotFoundError):
        return first, "`hpcbridge status` lists the jobs submitted from here", NOT_FOUND
    if isinstance(exc, UnknownSiteError):
        return first, "`hpcbridge sites list` shows the sites this machine knows", USAGE
    if isinstance(exc, ConfigError):
        return first, "`hpcbridge sites check` validates every site-config (docs/site-configs.md)", USAGE
    if isinstance(exc, ResourceError):
        return first, f"`hpcbridge sites show {site}` lists the partitions and their limits", USAGE
    if isinstance(exc, UsageError):
        return first, "", USAGE
    if isinstance(exc, SerializationError):
        return first, "the function and its arguments must be picklable", USAGE
    if isinstance(exc, ContainerError):
        return first, "docs/containers.md says how to build an image and set up a site's [container] table", SCHEDULER
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
