"""``hpcbridge submit`` and ``render``: what to run (file, module:function, command), and a command's outcome."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, Tuple

from ..errors import UnknownSiteError, UserCommandError
from .jobs import print_outcome, still_running, wait_for
from .output import JOB_FAILED, OK, CliError, Out, report


# -- targets ----------------------------------------------------------------------------------------------------
def resolve_target(args: argparse.Namespace) -> Tuple[Callable[..., Any], List[Any], str]:
    """``(callable, arguments, kind)`` for ``submit``/``render``: kind is command, file or function."""
    from .. import commands

    after = args.after
    if args.target is None:
        if not after:
            raise CliError(
                "nothing to run: give a Python file, module:function, or a command after --",
                "e.g. hpcbridge submit train.py, hpcbridge submit mypkg.jobs:main, hpcbridge submit -- hostname",
            )
        return commands.run_command, [list(after)], "command"
    extra = list(args.args) + list(after or [])
    target: str = args.target
    if target.endswith(".py") or (os.path.isfile(target) and ":" not in target):
        source = _read_source(target)
        try:
            compile(source, target, "exec")
        except SyntaxError as exc:
            raise CliError(f"{target}:{exc.lineno}: {exc.msg}", "the file must be valid Python") from None
        except ValueError as exc:  # a NUL byte (Python < 3.12; a SyntaxError since)
            raise CliError(f"{target}: {exc}", "the file must be valid Python") from None
        return commands.run_script, [os.path.abspath(target), source, extra], "file"
    if ":" in target:
        return _load_function(target), extra, "function"
    raise CliError(
        f"{target!r} is not a Python file or module:function",
        f"to run a command, put it after --: hpcbridge {args.command} -- {target} {' '.join(extra)}".rstrip(),
    )


def _read_source(path: str) -> str:
    """A Python file's text, decoded as Python would (UTF-8, or the encoding its coding line declares)."""
    import io
    import tokenize

    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", "give the path of a Python file you can read"
                       ) from None
    hint = "save it as UTF-8, or declare its encoding in a coding line (# -*- coding: latin-1 -*-)"
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    except SyntaxError as exc:  # an unknown encoding declared, or not UTF-8 in its first two lines
        raise CliError(f"cannot read {path}: {exc.msg}", hint) from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise CliError(f"cannot read {path}: line {line} is not {encoding} text ({exc.reason})", hint) from None


def _callables(obj: Any) -> str:
    """The public callables of a module (or class), for a hint."""
    names = [n for n in dir(obj) if not n.startswith("_")]
    return ", ".join(n for n in names if callable(getattr(obj, n, None)))[:200] or "none"


def _import(module_name: str) -> Any:
    """``module_name`` imported; what goes wrong in its import is the user's, in one line and a hint."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(
            f"cannot import {module_name!r}: {exc}", "run from the folder that holds it, or install it"
        ) from None
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else f"line {exc.lineno}"
        raise CliError(f"cannot import {module_name!r}: {where}: {exc.msg}", "the module must be valid Python"
                       ) from None
    except OSError as exc:  # its file exists but cannot be read
        raise CliError(f"cannot import {module_name!r}: cannot read {exc.filename}: {exc.strerror or exc}",
                       "make the module readable (chmod u+r)") from None
    except Exception as exc:  # its top-level code raised
        raise CliError(f"cannot import {module_name!r}: it raised {type(exc).__name__}: {exc}",
                       "fix the module's top-level code (--debug shows the traceback)") from exc


def _load_function(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CliError(f"{target!r} must be module:function", "e.g. mypkg.jobs:main")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = _import(module_name)
    obj: Any = module
    owner: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            from ..spec import did_you_mean

            names = [n for n in dir(obj) if not n.startswith("_")]
            raise CliError(f"{module_name} has no {attr!r}{did_you_mean(part, names)}",
                           f"callables there: {_callables(obj)}")
        owner, obj = obj, getattr(obj, part)
    if not callable(obj):
        raise CliError(f"{target} is not callable: it is {_a(type(obj).__name__)} ({_short_repr(obj)})",
                       f"give a function; callables there: {_callables(owner)}")
    module_file = os.path.abspath(getattr(module, "__file__", "") or "")
    if module_file.startswith(os.getcwd() + os.sep) and "site-packages" not in module_file:
        import cloudpickle  # a module of this folder need not be installed on the cluster: ship it by value

        cloudpickle.register_pickle_by_value(module)
    return obj  # type: ignore[no-any-return]


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _short_repr(obj: Any) -> str:
    import reprlib

    return reprlib.repr(obj)


def _executor(args: argparse.Namespace) -> Any:
    from ..executor import Executor
    from ..sites import default_site_origin
    from ..spec import RESOURCE_NAMES

    # the resource flags' dests are resource names (those without a flag, e.g. array_parallelism, are absent)
    resources = {k: getattr(args, k) for k in RESOURCE_NAMES if getattr(args, k, None) is not None}
    if resources.get("requeue") and getattr(args, "target", None) is None:  # -- CMD: restarted from scratch
        resources.setdefault("restartable", True)
    if args.site:
        return Executor(site=args.site, **resources)
    args.site, origin = default_site_origin()  # --site, else $HPCBRIDGE_SITE, else the project's default_site
    try:
        return Executor(site=args.site, **resources)
    except UnknownSiteError as exc:  # a site the user did not type: say where it came from
        raise CliError(str(exc).strip().splitlines()[0], f"the site {args.site!r} came from {origin}; "
                       "`hpcbridge sites list` shows the sites this machine knows (--site picks one)") from None


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
    try:
        finished = wait_for(job, args.timeout, out)
    except KeyboardInterrupt:  # Ctrl-C stops the waiting, not the job (as a timeout does)
        return still_running(job, out, interrupted=True)
    if not finished:
        return still_running(job, out)
    if kind in ("command", "file"):
        return _relay(job, out)
    return print_outcome(job, out)


def _relay(job: Any, out: Out) -> int:
    """A command's or script's job is done: its output here, its exit status as ours."""
    sys.stdout.write(job.stdout())
    sys.stdout.flush()
    sys.stderr.write(_without_worker_report(job.stderr()))
    exc = job.exception() if not job.cancelled() else None
    if job.cancelled():
        report(f"job {job.job_id} was cancelled", "")
        return JOB_FAILED
    if exc is None:
        return OK
    if isinstance(exc, UserCommandError):
        return exc.returncode if 0 < exc.returncode < 256 else JOB_FAILED
    report(f"job {job.job_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
           f"hpcbridge logs {job.job_id} shows its output")
    return JOB_FAILED


def _without_worker_report(text: str) -> str:
    """A command's stderr without the worker's own traceback of UserCommandError (its exit status says it)."""
    marker = "Traceback (most recent call last):"
    cut = text.rfind(marker)
    tail = text[cut:] if cut >= 0 else ""
    raised = f"{UserCommandError.__module__}.{UserCommandError.__qualname__}: "
    if raised in tail and tail.rstrip().endswith("call(s) raised (rank 0)"):
        return text[:cut]
    return text
