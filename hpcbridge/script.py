"""The batch script of a submission (pure): the template's context from the site, the resources, the scheduler's
directives and the launch plan, then the template rendered.

Nothing here reads the environment or the current directory: the caller passes the directory the job starts in
and the user's template folder, so the same inputs always give the same script.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from ._version import __version__
from .containers import container_for, script_checks
from .launchers import plan as launch_plan
from .launchers import with_site_launcher
from .pickling import describe, job_name
from .render import render
from .schedulers.base import Scheduler, ScriptRequest
from .sites import Site
from .spec import Resources
from .store import SAFE_PATH, JobFolder


def script_context(
    site: Site,
    scheduler: Scheduler,
    resources: Resources,
    *,
    folder: str,
    tag: str,
    array_size: Optional[int],
    fn: Callable[..., Any],
    ncalls: int,
    cwd: Optional[str],
    container_binary: Optional[str] = None,
) -> Dict[str, Any]:
    """The template's variables. ``cwd``: the client's directory when the job may start there (a login node shares
    it with the nodes), else None; a directory whose name cannot stand in a directive is left to the scheduler's
    default (the submit directory). ``container_binary``: the container runtime's program the image check found."""
    res = with_site_launcher(site, resources)
    workdir = cwd if cwd is not None and SAFE_PATH.match(cwd) else None
    req = ScriptRequest(res, folder, res.name or job_name(fn), tag, array_size, workdir=workdir)
    # the worker, or a launcher around it; with a container, the per-rank program runs in the image
    command, job_env = launch_plan(site, res, folder, tag, workdir=workdir, container_binary=container_binary)
    container = container_for(site, res, folder=folder, workdir=workdir, binary=container_binary)
    return {
        "directives": scheduler.directives(req),
        "version": __version__,
        "description": describe(fn, ncalls),
        "modules": list(site.modules),
        "env": {**site.env, **job_env},
        "setup": list(site.setup),
        "task_index_expr": scheduler.task_index_expr,
        "command": command,
        "site": site.name,
        "resources": res,
        "folder": folder,  # the job folder
        "logs_dir": JobFolder(folder).logs_dir,  # where the pbs template writes each task's log files
        "workdir": workdir,  # the directory the job starts in (None: the scheduler's default)
        # a container job: the bind sources the script checks on the node, whether the runtime needs $USER
        "container": None if container is None else script_checks(container),
        "requeue": requeue_context(scheduler, res, folder),
    }


#: stands for the task's index in a job-folder path the batch shell completes (``"$HPCBRIDGE_TASK"``)
_TASK = "\0task\0"


def requeue_context(scheduler: Scheduler, res: Resources, folder: str) -> Optional[Dict[str, Any]]:
    """With ``requeue`` on (docs/requeue.md): what the scheduler's requeue partial needs; None otherwise. Paths
    that hold the task's index come as (before, after) pairs around it, each quoted by the template."""
    if not res.requeue or scheduler.requeue_template is None:
        return None
    paths = JobFolder(folder)
    marker = paths.checkpoint_marker(_TASK)
    note = paths.run_note(_TASK, "")
    return {
        "template": scheduler.requeue_template,
        "max": res.requeue,
        "grace": res.grace_s,
        "restartable": res.restartable,
        "walltime_s": res.walltime_s,
        "dir": paths.checkpoint_dir,
        "marker": tuple(marker.split(_TASK, 1)),
        "note": tuple(note.split(_TASK, 1)),
        # PBS (requeue by a follow-up job): how the script submits itself again, and the client's cancel marker
        "submit": scheduler.submit_argv(paths.script),
        "cancelled": paths.requeue_cancelled,
    }


def render_script(scheduler: Scheduler, context: Dict[str, Any], template_dirs: Sequence[str]) -> str:
    """The batch script: the scheduler's template, looked up in ``template_dirs`` first (user, then site)."""
    return render(scheduler.template, context, list(template_dirs))
