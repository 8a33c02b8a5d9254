"""What one site needs at run time: its transport, scheduler adapter, poller and the job registry."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from . import __version__
from .errors import (
    CommandTimeoutError,
    ConfigError,
    ConnectionLostError,
    RemoteEnvironmentError,
    SchedulerError,
    TransportError,
)
from .poll import Poller
from .registry import Registry
from .schedulers.base import NativeStatus, Scheduler, StatusFailure
from .sites import Site
from .transport.base import Completed, Transport

log = logging.getLogger("hpcbridge")

#: Variables of an enclosing job that must not leak into a new submission (JupyterHub-on-HPC notebooks run
#: inside a job; srun/sbatch read SLURM_* as input and would inherit the parent's layout).
SCRUB_PREFIXES = ("SLURM_", "SRUN_", "SALLOC_", "PBS_", "PMI_", "PMIX_", "OMPI_COMM_WORLD_")
SCRUB_NAMES = ("HPCBRIDGE_TASK", "HPCBRIDGE_RANK")
#: after a drop during a submission: when to look for the job by its tag (s, cumulative ~10 s)
FIND_BY_TAG_WAITS_S = (0.0, 1.0, 2.0, 3.0, 4.0)

_CHECK = (
    "import json, sys\n"
    "def v(name):\n"
    "    try:\n"
    "        return __import__(name).__version__\n"
    "    except Exception:\n"
    "        return None\n"
    "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'executable': sys.executable,\n"
    "                  'cloudpickle': v('cloudpickle'), 'hpcbridge': v('hpcbridge')}))\n"
)


#: paths that can stand in scheduler directives as they are (no quoting there): no spaces, quotes, % or #
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+,@=:/~-]*$")


#: how long a scheduler command (sbatch, scancel, ...) may take before it counts as hung (s)
COMMAND_TIMEOUT_S = 120.0
#: waits between attempts of a command the scheduler never received (see Scheduler.not_sent_errors)
SUBMIT_RETRY_WAITS_S = (2.0, 5.0, 10.0)


#: cluster-side environments (remote_env_key) that passed Backend.check_remote_env in this process
_ENV_PASSED: Set[Tuple[str, ...]] = set()
_ENV_LOCKS: Dict[Tuple[str, ...], threading.Lock] = {}
_ENV_GUARD = threading.Lock()


def remote_env_key(site: Site) -> Tuple[str, ...]:
    """What identifies a site's cluster-side python: the site, where its commands run, and the python path."""
    target = json.dumps(dict(site.ssh), sort_keys=True, default=str) if site.transport != "local" else ""
    return (site.name, site.transport, target, site.python)


def clean_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``environ`` without the scheduler variables of an enclosing job."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not k.startswith(SCRUB_PREFIXES) and k not in SCRUB_NAMES}


def make_transport(site: Site) -> Transport:
    if site.transport == "local":
        from .transport.local import LocalTransport

        return LocalTransport()
    if site.transport == "ssh":
        try:
            from .transport.ssh import SSHTransport  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                f"site {site.name!r}: the ssh transport is not available ({exc}); install it with: "
                "pip install 'hpcbridge[ssh]' (or pip install paramiko)"
            ) from exc
        return SSHTransport(site)  # type: ignore[no-any-return,unused-ignore]
    raise ConfigError(f"site {site.name!r}: unknown transport {site.transport!r}")


def make_scheduler(site: Site, root: str) -> Scheduler:
    if site.scheduler == "slurm":
        from .schedulers.slurm import SlurmScheduler

        return SlurmScheduler(
            accounting=site.accounting, gpu_directive=str(site.slurm.get("gpu_directive", "gpus-per-node"))
        )
    if site.scheduler == "local":
        from .schedulers.local import LocalScheduler

        return LocalScheduler(site.python, root, site.local_parallel or (os.cpu_count() or 1))
    if site.scheduler == "pbs":
        from .schedulers.pbs import PBSScheduler

        return PBSScheduler(flavour=site.flavour or "pbspro")
    raise ConfigError(f"site {site.name!r}: the {site.scheduler!r} scheduler is not supported yet")


class Backend:
    """Shared by an executor and its ``with_resources`` copies."""

    def __init__(self, site: Site, folder: Optional[str] = None) -> None:
        self.site = site
        self.transport = make_transport(site)
        self.root = self.transport.expanduser(folder or site.workdir).rstrip("/")
        if not SAFE_PATH.match(self.root):
            raise ConfigError(
                f"site {site.name!r}: the job folder {self.root!r} must be an absolute path without spaces, quotes, "
                "'%' or '#' (it is written into the scheduler's directives); set another `workdir` in the "
                "site-config or pass folder=..."
            )
        self.scheduler = make_scheduler(site, self.root)
        self.poller = Poller(self)
        self.registry = Registry()
        self._root_ready = False
        self._final: List[Tuple[str, int, str]] = []
        self._final_lock = threading.Lock()

    # -- commands -----------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: Optional[float] = None) -> Completed:
        env = clean_env() if self.site.transport == "local" else None
        return self.transport.run(argv, env=env, timeout=COMMAND_TIMEOUT_S if timeout is None else timeout)

    def run_checked(self, argv: Sequence[str], what: str, tag: Optional[str] = None) -> Completed:
        """Run ``argv``; a non-zero exit raises :class:`SchedulerError`.

        ``tag``: ``argv`` submits the job tagged ``hpcbridge:TAG``. If the connection drops after it was sent, or
        the command hangs past COMMAND_TIMEOUT_S (either way the outcome is unknown), the job is looked up by its
        tag instead of being submitted a second time.
        """
        not_sent = self.scheduler.not_sent_errors
        for wait in (*SUBMIT_RETRY_WAITS_S, None):
            try:
                out = self.run(argv)
            except (ConnectionLostError, CommandTimeoutError) as exc:
                if tag is None or not exc.maybe_ran or self.scheduler.find_by_tag_argv(tag) is None:
                    raise
                out = self._find_submitted(argv, tag, exc)
            # the controller could not even be reached (it restarts, or is overloaded): nothing was submitted,
            # so trying again is safe
            if wait is None or out.returncode == 0 or not any(e in out.stderr for e in not_sent):
                break
            log.warning("hpcbridge: %s: %s; trying again in %s s", out.argv[0], out.stderr.strip()[-200:], wait)
            time.sleep(wait)
        if out.returncode != 0:
            raise SchedulerError(
                f"could not {what} on site {self.site.name!r}",
                argv=out.argv,
                exit_code=out.returncode,
                stdout=out.stdout,
                stderr=out.stderr,
            )
        return out

    def _find_submitted(self, argv: Sequence[str], tag: str, lost: TransportError) -> Completed:
        """After a drop or a timeout during a submission: the job's id if it exists (found by its tag), else
        submit it again."""
        sched = self.scheduler
        find = sched.find_by_tag_argv(tag)
        assert find is not None  # run_checked asked
        for wait in FIND_BY_TAG_WAITS_S:  # an sbatch still running on the login node gets a few seconds to finish
            time.sleep(wait)
            try:
                found = self.run(find, timeout=60)
            except TransportError as exc:
                message = f"{lost} (site {self.site.name!r}; the job, if submitted, {sched.find_by_tag_hint(tag)})"
                if isinstance(lost, CommandTimeoutError):
                    raise CommandTimeoutError(message) from exc
                raise ConnectionLostError(message, maybe_ran=True) from exc
            job_id = sched.parse_find_by_tag(found.stdout, tag) if found.returncode == 0 else None
            if job_id:
                log.warning("hpcbridge: the submission was interrupted (%s); job %s was found by its tag "
                            "hpcbridge:%s (not submitted again)", lost, job_id, tag)
                return Completed(list(argv), 0, f"{job_id}\n", "")
        if isinstance(lost, CommandTimeoutError):
            # a command that hung (a stalled filesystem, an overloaded login node) may still submit minutes later:
            # never send it a second time; the folder is kept and the user told where the job would show
            raise CommandTimeoutError(
                f"{lost}; no job carries the tag hpcbridge:{tag} yet, and it is not submitted again in case the hung "
                f"command still does (site {self.site.name!r}; the job, if submitted, {sched.find_by_tag_hint(tag)})"
            )
        # a dropped connection: the command had time to reach the scheduler; not there, so it never ran
        log.warning("hpcbridge: the submission was interrupted (%s) and no job carries the tag hpcbridge:%s; "
                    "submitting it again", lost, tag)
        return self.run(argv)

    def query_status(
        self, job_ids: Sequence[str], since: float, _again: bool = False
    ) -> Optional[Dict[str, NativeStatus]]:
        """Statuses of all tasks of ``job_ids``, or None when the query failed (retried later)."""
        try:
            # a hung controller holds up the poller thread: give up after 30 s, retry on the back-off
            out = self.run(self.scheduler.status_argv(job_ids, since), timeout=30)
        except TransportError as exc:
            log.warning("hpcbridge: status query failed, will retry: %s", exc)
            return None
        if out.returncode == 0:
            return self.scheduler.parse_status(out.stdout)
        verdict, note = self.scheduler.status_failed(out.returncode, out.stderr)
        if note:
            log.warning("hpcbridge: site %r: %s", self.site.name, note)
        if verdict is StatusFailure.ASK_AGAIN and not _again:
            return self.query_status(job_ids, since, _again=True)
        if verdict is StatusFailure.NONE_KNOWN:
            return {}
        if verdict is StatusFailure.ANSWERED:
            return self.scheduler.parse_status(out.stdout)
        log.warning("hpcbridge: status query %s failed (%s), will retry: %s",
                    out.argv[0], out.returncode, out.stderr.strip()[-300:])
        return None

    def show_job(self, task_id: str) -> Optional[NativeStatus]:
        argv = self.scheduler.show_job_argv(task_id)
        if argv is None:
            return None
        out = self.run(argv, timeout=30)
        if out.returncode != 0:
            return None
        return self.scheduler.parse_show_job(task_id, out.stdout)

    # -- folders ------------------------------------------------------------------------------------------
    def ensure_root(self) -> None:
        if not self._root_ready:
            self.transport.makedirs(self.root, mode=0o700)
            self._root_ready = True

    # -- the cluster-side python ----------------------------------------------------------------------------
    def check_remote_env(self) -> None:
        """Once per site and process: the cluster's python must match ours (major.minor) and have cloudpickle and
        hpcbridge. A passed check is remembered for every executor of the same site, target and python; a failed
        one is not, so the next submission checks again (after the site was fixed)."""
        # the very interpreter running this process (not its realpath: a venv's python is a symlink to the
        # system one, with other packages)
        if self.site.transport == "local" and os.path.abspath(self.site.python) == sys.executable:
            return
        key = remote_env_key(self.site)
        with _ENV_GUARD:
            lock = _ENV_LOCKS.setdefault(key, threading.Lock())
        with lock:  # executors of one site starting together run the check once
            if key in _ENV_PASSED:
                return
            self._check_remote_env()
            _ENV_PASSED.add(key)

    def _check_remote_env(self) -> None:
        import cloudpickle

        python = self.site.python
        fix = f"set `python = \"/path/to/python3.{sys.version_info[1]}\"` in the site-config of {self.site.name!r}"
        try:
            out = self.run([python, "-c", _CHECK], timeout=120)
        except TransportError as exc:
            raise RemoteEnvironmentError(
                f"site {self.site.name!r}: the cluster-side python {python!r} could not be started ({exc}); {fix}"
            ) from exc
        try:
            info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        except (ValueError, IndexError):
            info = None
        if info is None:
            raise RemoteEnvironmentError(
                f"site {self.site.name!r}: the cluster-side python {python!r} did not run "
                f"(exit code {out.returncode}: {out.stderr.strip()[-300:]}); {fix}"
            )
        ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
        theirs = ".".join(info["python"].split(".")[:2])
        problems = []
        if theirs != ours:
            problems.append(f"Python {info['python']} there, {sys.version.split()[0]} here (major.minor must match)")
        if info["cloudpickle"] is None:
            problems.append("cloudpickle is not installed there")
        elif info["cloudpickle"].split(".")[0] != cloudpickle.__version__.split(".")[0]:
            problems.append(f"cloudpickle {info['cloudpickle']} there, {cloudpickle.__version__} here")
        if info["hpcbridge"] is None:
            problems.append("hpcbridge is not installed there")
        if problems:
            wanted = f"'hpcbridge=={__version__}' 'cloudpickle=={cloudpickle.__version__}'"
            if theirs != ours:  # no package installed into that python can help
                remedy = f"{fix}, a Python {ours} with {wanted} installed"
            else:
                remedy = f"install matching versions there ({info['executable']} -m pip install {wanted}), or {fix}"
            raise RemoteEnvironmentError(
                f"site {self.site.name!r}: the cluster-side python {info['executable']} cannot run these jobs: "
                + "; ".join(problems)
                + f". Fix: {remedy}"
            )

    # -- registry -----------------------------------------------------------------------------------------
    def note_final(self, job: object) -> None:
        with self._final_lock:
            self._final.append((job.job_id, job.position, job.state.value))  # type: ignore[attr-defined]

    def flush_states(self) -> None:
        """Write the final states noted so far to the registry; kept for the next flush if that fails."""
        with self._final_lock:
            rows, self._final = self._final, []
        if not rows:
            return
        try:
            self.registry.update_states(self.site.name, rows)
        except Exception as exc:  # the registry is a convenience; never fail a job over it
            log.warning("hpcbridge: could not update the job registry (will retry): %s", exc)
            with self._final_lock:
                self._final[:0] = rows
