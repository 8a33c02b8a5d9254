"""What one site needs at run time: its transport, scheduler adapter, poller and the job registry."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from . import __version__
from .errors import ConfigError, RemoteEnvironmentError, SchedulerError, TransportError
from .poll import Poller
from .registry import Registry
from .schedulers.base import NativeStatus, Scheduler
from .sites import Site
from .transport.base import Completed, Transport

log = logging.getLogger("hpcbridge")

#: Variables of an enclosing job that must not leak into a new submission (JupyterHub-on-HPC notebooks run
#: inside a job; srun/sbatch read SLURM_* as input and would inherit the parent's layout).
SCRUB_PREFIXES = ("SLURM_", "SRUN_", "SALLOC_", "PBS_", "PMI_", "PMIX_", "OMPI_COMM_WORLD_")
SCRUB_NAMES = ("HPCBRIDGE_TASK", "HPCBRIDGE_RANK")

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
            raise ConfigError(f"site {site.name!r}: the ssh transport is not available: {exc}") from exc
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
        self.scheduler = make_scheduler(site, self.root)
        self.poller = Poller(self)
        self.registry = Registry()
        self._lock = threading.Lock()
        self._checked = False
        self._root_ready = False
        self._final: List[Tuple[str, int, str]] = []

    # -- commands -----------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: float = 120.0) -> Completed:
        env = clean_env() if self.site.transport == "local" else None
        return self.transport.run(argv, env=env, timeout=timeout)

    def run_checked(self, argv: Sequence[str], what: str) -> Completed:
        out = self.run(argv)
        if out.returncode != 0:
            raise SchedulerError(
                f"could not {what} on site {self.site.name!r}",
                argv=out.argv,
                exit_code=out.returncode,
                stdout=out.stdout,
                stderr=out.stderr,
            )
        return out

    def query_status(self, job_ids: Sequence[str], since: float) -> Optional[Dict[str, NativeStatus]]:
        """Statuses of all tasks of ``job_ids``, or None when the query failed (retried later)."""
        try:
            out = self.run(self.scheduler.status_argv(job_ids, since), timeout=60)
        except TransportError as exc:
            log.warning("hpcbridge: status query failed, will retry: %s", exc)
            return None
        if out.returncode != 0 and getattr(self.scheduler, "accounting", False) and (
            "accounting storage is disabled" in out.stderr.lower()
        ):
            # detected: this cluster keeps no accounting (site-config said it does); use squeue + scontrol
            log.warning("hpcbridge: site %r has no Slurm accounting; using squeue and scontrol show job "
                        "(set `accounting = false` in its site-config)", self.site.name)
            self.scheduler.accounting = False  # type: ignore[attr-defined]
            return self.query_status(job_ids, since)
        if out.returncode != 0:
            if "Invalid job id" in out.stderr and not getattr(self.scheduler, "accounting", True):
                return {}  # squeue forgot every one of them: fall back to scontrol show job
            exit_ok = getattr(self.scheduler, "status_exit_ok", None)
            if exit_ok is not None and exit_ok(out.returncode, out.stderr):
                return self.scheduler.parse_status(out.stdout)  # qstat: some jobs unknown (they have left)
            log.warning("hpcbridge: status query %s failed (%s), will retry: %s",
                        out.argv[0], out.returncode, out.stderr.strip()[-300:])
            return None
        return self.scheduler.parse_status(out.stdout)

    def show_job(self, task_id: str) -> Optional[NativeStatus]:
        show = getattr(self.scheduler, "show_job_argv", None)
        if show is None:
            return None
        out = self.run(show(task_id), timeout=60)
        if out.returncode != 0:
            return None
        parsed: Optional[NativeStatus] = self.scheduler.parse_show_job(task_id, out.stdout)  # type: ignore[attr-defined]
        return parsed

    # -- folders ------------------------------------------------------------------------------------------
    def ensure_root(self) -> None:
        if not self._root_ready:
            self.transport.makedirs(self.root, mode=0o700)
            self._root_ready = True

    # -- the cluster-side python ----------------------------------------------------------------------------
    def check_remote_env(self) -> None:
        """Once per site: the cluster's python must match ours (major.minor) and have cloudpickle and hpcbridge."""
        with self._lock:
            if self._checked:
                return
            # the very interpreter running this process (not its realpath: a venv's python is a symlink to the
            # system one, with other packages)
            if self.site.transport == "local" and os.path.abspath(self.site.python) == sys.executable:
                self._checked = True
                return
            self._check_remote_env()
            self._checked = True

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
            raise RemoteEnvironmentError(
                f"site {self.site.name!r}: the cluster-side python {info['executable']} cannot run these jobs: "
                + "; ".join(problems)
                + f". Fix: install matching versions there ({info['executable']} -m pip install "
                f"'hpcbridge=={__version__}' 'cloudpickle=={cloudpickle.__version__}'), or {fix}"
            )

    # -- registry -----------------------------------------------------------------------------------------
    def note_final(self, job: object) -> None:
        self._final.append((job.job_id, job.position, job.state.value))  # type: ignore[attr-defined]

    def flush_states(self) -> None:
        if self._final:
            rows, self._final = self._final, []
            try:
                self.registry.update_states(self.site.name, rows)
            except Exception as exc:  # the registry is a convenience; never fail a job over it
                log.warning("hpcbridge: could not update the job registry: %s", exc)
