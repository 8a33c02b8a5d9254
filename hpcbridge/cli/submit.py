"""``hpcbridge submit`` and ``render``: what to run (file, module:function, command), and a command's outcome."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, Tuple

from ..errors import UserCommandError
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
        try:
            with open(target, encoding="utf-8") as fh:
                source = fh.read()
        except OSError as exc:
            raise CliError(f"cannot read {target}: {exc.strerror or exc}", "give the path of a Python file") from None
        try:
            compile(source, target, "exec")
        except SyntaxError as exc:
            raise CliError(f"{target}:{exc.lineno}: {exc.msg}", "the file must be valid Python") from None
        return commands.run_script, [os.path.abspath(target), source, extra], "file"
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
            from ..spec import did_you_mean

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
    from ..executor import Executor
    from ..sites import default_site
    from ..spec import RESOURCE_NAMES

    # the resource flags' dests are resource names (those without a flag, e.g. array_parallelism, are absent)
    resources = {k: getattr(args, k) for k in RESOURCE_NAMES if getattr(args, k, None) is not None}
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
