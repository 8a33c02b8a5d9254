"""Finding an earlier job in this machine's registry: ``attach`` (the API) and ``find_job`` (also the CLI's).

Named ``attaching``, not ``attach``: a submodule named like the package's ``attach`` function would replace that
function as the attribute ``hpcbridge.attach`` once imported.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from typing import Any, Dict, List, Optional, Union

from .backend import Backend
from .display import image_label
from .errors import JobNotFoundError, UsageError
from .job import Job
from .jobenv import REQUEUE_VAR
from .registry import Registry
from .sites import Site, default_site, load_site
from .state import JobState
from .store import JobFolder
from .submission import Submission


def find_job(job_id: str, site: Optional[str] = None, registry: Optional[Registry] = None) -> List[Dict[str, Any]]:
    """The registry rows of ``job_id`` (a task's, or every task's of an array's id), on ``site`` or on any site.

    Raises :class:`JobNotFoundError` when this machine's registry has none.
    """
    rows = (registry or Registry()).lookup(job_id, site)
    if not rows:
        where = f" of site {site!r}" if site else ""
        raise JobNotFoundError(f"no job {job_id}{where} in this machine's registry")
    return rows


def attach(job_id: Union[str, int], site: Union[str, Site, None] = None, position: int = 0) -> Job:
    """The :class:`Job` of an earlier submission, from any process on this machine (via the job registry).

    ``position`` picks one call when several were bundled into one array task (``map_jobs(chunksize=k)``).
    Raises :class:`JobNotFoundError` for an id the registry does not hold (a task beyond an array's end too), and
    :class:`UsageError` for an array's own id (attach one task) or a position the task does not hold.
    ``site``: default as :class:`Executor`'s (``$HPCBRIDGE_SITE``, the project file's ``default_site``, ``local``).
    """
    if site is None:
        site = default_site()
    site_obj = load_site(site) if isinstance(site, str) else site
    registry = Registry()
    try:
        listed = find_job(str(job_id), site_obj.name, registry)
    except JobNotFoundError:  # the same answer, worded for a Python caller: where it looked, whose jobs it holds
        raise JobNotFoundError(
            f"no job {job_id} of site {site_obj.name!r} in the registry {registry.path}; "
            "attach works for jobs submitted by hpcbridge from this machine and user "
            "(see `hpcbridge status`)"
        ) from None
    rows = registry.find(site_obj.name, str(job_id))
    if not rows:  # the id is an array's: its tasks were listed
        tasks = sorted({r["job_id"] for r in listed})
        raise UsageError(
            f"job {job_id} is an array of {len(tasks)} task(s); attach one of them: "
            + ", ".join(tasks[:3]) + (f" ... {tasks[-1]}" if len(tasks) > 3 else "")
        )
    matching = [r for r in rows if r["position"] == position]
    if not matching:
        raise UsageError(f"job {job_id} holds {len(rows)} bundled call(s); position={position} is not one")
    row = matching[0]
    chunks = json.loads(row["chunks"])
    # the job's own folder root (it may have been submitted with Executor(folder=...)): the local batch
    # system finds its jobs there
    backend = Backend(site_obj, folder=posixpath.dirname(row["folder"]))
    sub = Submission(
        backend,
        tag=row["tag"],
        folder=row["folder"],
        script="",
        chunks=chunks,
        is_array=bool(row["is_array"]),
        ranks=row["ranks"],
        submit_time=row["submit_time"],
        job_id=row["job_id"],
    )
    script = backend.transport.read_files([JobFolder(row["folder"]).script])
    sub.script = next(iter(script.values()), b"").decode("utf-8", "replace")
    sub.requeue = int(f"export {REQUEUE_VAR}=" in sub.script)  # requeue on: its runs are read when it ends
    sub.resolved = set(range(len(chunks))) - {row["task"]}
    job: Job = sub.jobs[row["task"]][position]
    with contextlib.suppress(ValueError):
        job.state = JobState(row["last_state"])  # what was last seen, until the poller knows better
    with contextlib.suppress(ValueError, TypeError):
        job.image = image_label(json.loads(row.get("container") or "null"))  # its container image, if any
    backend.poller.add(sub)
    return job
