"""Launchers: the worker's argv in, the argv that starts it on every rank out (pure).

``Executor(nodes=N, tasks_per_node=T, launcher=...)`` runs the callable on N x T ranks:

- ``srun``: ``srun [--mpi=<site>] --nodes=N --ntasks=N*T --ntasks-per-node=T --cpus-per-task=C
  --kill-on-bad-exit=1 PY -u -m hpcbridge.worker F`` (Slurm only).
- ``mpirun``: ``mpirun -np N*T --map-by ppr:T:node[:PE=C] PY -u -m hpcbridge.worker F`` (OpenMPI; MPICH's and
  Cray PALS' ``mpiexec`` flags with ``[mpi] flavour``). Inside Slurm and PBS-with-TM allocations
  OpenMPI finds the nodes itself; elsewhere a hostfile is passed.
- ``torchrun``: one ``python -m torch.distributed.run`` per node (``srun --ntasks-per-node=1`` on Slurm, a
  per-node ``mpirun`` on PBS) with c10d rendezvous on the first node:
  ``--nnodes=N --nproc-per-node=T --rdzv-backend=c10d --rdzv-endpoint={master_addr}:{master_port}``.

With a launcher the job's command is ``PY -m hpcbridge.rendezvous F -- <launcher argv>``: it picks the master
port on the first node, publishes it, fills in ``{master_addr}``/``{master_port}``/``{nodefile}`` and execs the
launcher (see :mod:`hpcbridge.rendezvous`). Site settings: :func:`site_options` (docs/multinode.md).
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .containers import Container, container_for, srun_flags, wrap
from .errors import ConfigError, ResourceError
from .jobenv import BIND_GPUS_VAR, LAUNCHER_VAR, NCCL_ENV_VAR
from .ports import DEFAULT_PORT_RANGE
from .schedulers import scheduler_class
from .spec import LAUNCHERS, Resources

if TYPE_CHECKING:  # pragma: no cover
    from .sites import Site

MPI_FLAVOURS = ("openmpi", "mpich", "pals")


def site_options(site: Site) -> Dict[str, Any]:
    """The launcher settings of a site-config, with defaults (keys as :func:`launcher_argv` reads them).

    ``[slurm] mpi``, ``[slurm] srun_args``, ``[mpi] mpirun``/``args``/``flavour``/``env``, ``[distributed]
    master_port_min``/``master_port_max``/``bind_gpus``/``torchrun_args`` and ``nccl`` (docs/site-configs.md).
    """
    flavour = site.mpi.get("flavour", "openmpi")
    dist = site.distributed
    options: Dict[str, Any] = {
        "mpi": site.slurm.get("mpi") or None,
        "srun_args": list(site.slurm.get("srun_args", ())),
        "mpirun": [site.mpi.get("mpirun") or ("mpirun" if flavour == "openmpi" else "mpiexec")],
        "mpirun_args": list(site.mpi.get("args", ())),
        "mpirun_flavour": flavour,
        "mpi_env": dict(site.mpi.get("env", {})),
        "torchrun_args": list(dist.get("torchrun_args", ())),
        "bind_gpus": bool(dist.get("bind_gpus", True)),
    }
    if "master_port_min" in dist or "master_port_max" in dist:
        lo = int(dist.get("master_port_min", DEFAULT_PORT_RANGE[0]))
        hi = int(dist.get("master_port_max", DEFAULT_PORT_RANGE[1]))
        if not 1024 <= lo <= hi <= 65535:
            raise ConfigError(
                f"{site.where('distributed')}: master ports {lo}-{hi}: need 1024 <= master_port_min <= "
                "master_port_max <= 65535"
            )
        options["master_port_range"] = (lo, hi)
    return options


def effective_launcher(site: Site, res: Resources) -> Optional[str]:
    """The launcher a job of ``res`` runs with on ``site``.

    The one chosen (``launcher=`` or the site-config's ``[defaults] launcher``; an explicit None runs the callable
    once); else the scheduler's default (its adapter's ``default_launcher``: PBS ``mpirun`` for a job of more than
    one task; Slurm and the local site pick none).
    """
    if res.launcher is not None or res.launcher_chosen:
        return res.launcher
    return scheduler_class(site.scheduler).default_launcher(res)


def with_site_launcher(site: Site, res: Resources) -> Resources:
    """``res`` with :func:`effective_launcher` filled in (what the job's script and records use)."""
    launcher = effective_launcher(site, res)
    if launcher == res.launcher:
        return res
    return dataclasses.replace(res, launcher=launcher, launcher_chosen=True)


def worker_argv(python: str, folder: str) -> List[str]:
    return [python, "-u", "-m", "hpcbridge.worker", folder]


def host_python_needed(site: Site, res: Resources) -> bool:
    """Whether a job of ``res`` runs hpcbridge on the host: always without a container; with one, only for the
    launch step of a launcher (hpcbridge.rendezvous). A container job without a launcher needs no python there."""
    return container_for(site, res) is None or effective_launcher(site, res) is not None


def plan(
    site: Site,
    res: Resources,
    folder: str,
    tag: str,
    *,
    workdir: Optional[str] = None,
    container_binary: Optional[str] = None,
) -> Tuple[List[str], Dict[str, str]]:
    """The job's command and the extra variables its script exports, for ``res`` on ``site``.

    A job in a container (:mod:`hpcbridge.containers`) runs only its per-rank program there: ``workdir`` is where
    the job starts, ``container_binary`` the runtime's program that the image check found.
    Raises :class:`ResourceError` (before anything is submitted) for a launcher the site cannot run.
    """
    res = with_site_launcher(site, res)
    options = site_options(site)
    container = container_for(site, res, folder=folder, workdir=workdir, binary=container_binary)
    worker = worker_argv(site.python, folder)
    # the site's MPI environment in every job, whatever starts its MPI programs: hpcbridge's srun or mpirun, torchrun
    # (a callable may still use MPI, or start mpirun itself), or the job without a launcher
    env: Dict[str, str] = dict(options["mpi_env"])
    if site.nccl and (res.launcher or res.gpus_per_node):
        env[NCCL_ENV_VAR] = json.dumps(dict(sorted(site.nccl.items())), separators=(",", ":"))
    if not res.launcher:
        if container is None:
            return worker, env
        inner = worker_argv(container.python, folder)
        if container.runtime == "pyxis":  # pyxis is srun's: one task, on the first node
            one = dataclasses.replace(res, nodes=1, tasks_per_node=1)
            return [*_pyxis_srun(site.scheduler, one, options, container), *inner], env
        return wrap(container, inner), env
    env[LAUNCHER_VAR] = res.launcher
    if res.gpus_per_node and res.launcher in ("srun", "mpirun") and options.get("bind_gpus", True):
        env[BIND_GPUS_VAR] = str(res.gpus_per_node)
    launch = launcher_argv(
        res.launcher,
        res,
        python=site.python,
        folder=folder,
        scheduler=site.scheduler,
        mpi=options["mpi"],
        rdzv_id=tag,
        options=options,
        container=container,
    )
    wrapper = [site.python, "-m", "hpcbridge.rendezvous", folder]
    if "master_port_range" in options:
        lo, hi = options["master_port_range"]
        wrapper += ["--port-range", f"{lo}-{hi}"]
    return [*wrapper, "--", *launch], env


def launcher_argv(
    launcher: str,
    res: Resources,
    *,
    python: str,
    folder: str,
    scheduler: str = "slurm",
    mpi: Optional[str] = None,
    rdzv_id: str = "hpcbridge",
    options: Optional[Mapping[str, Any]] = None,
    container: Optional[Container] = None,
) -> List[str]:
    """The argv that runs the worker on every rank of ``res`` (``{master_*}`` placeholders left in).

    ``scheduler`` names the site's; its adapter says which launchers it can run and how (per-node start, hostfile).
    With a ``container`` the launcher stays on the host and starts the runtime per rank (torchrun: per node, its
    agent runs in the image and starts the workers there); pyxis adds srun's flags instead.
    """
    options = options or {}
    adapter = scheduler_class(scheduler)
    pyxis = container is not None and container.runtime == "pyxis"
    inside = container.python if container is not None else python

    def run_inside(argv: List[str]) -> List[str]:
        return argv if container is None else wrap(container, argv)

    worker = run_inside(worker_argv(inside, folder))
    if adapter.one_machine and res.nodes > 1:
        raise ResourceError(
            f"nodes={res.nodes} with launcher={launcher!r}: the {scheduler} site is one machine; use nodes=1"
        )
    if launcher in LAUNCHERS and launcher not in adapter.launchers:
        needs = "needs a Slurm site" if launcher == "srun" else "cannot run on this site"
        raise ResourceError(
            f"launcher={launcher!r} {needs} (this one is {scheduler!r}); use launcher="
            + " or ".join(repr(name) for name in adapter.launchers)
        )
    if pyxis and (launcher == "mpirun" or (launcher == "torchrun" and adapter.per_node_launcher != "srun")):
        raise ResourceError(
            f"launcher={launcher!r} cannot start pyxis containers (pyxis adds srun's --container-image); use "
            "launcher='srun'" + (" or 'torchrun'" if adapter.per_node_launcher == "srun" else "")
        )
    if launcher == "srun":
        return [*srun_argv(res, mpi=mpi, extra=[*options.get("srun_args", ()), *srun_flags(container)]), *worker]
    if launcher == "mpirun":
        return [*mpirun_argv(res, scheduler=scheduler, options=options), *worker]
    if launcher == "torchrun":
        if adapter.per_node_launcher == "srun":
            per_node = srun_per_node_argv(res, extra=[*options.get("srun_args", ()), *srun_flags(container)])
        elif adapter.per_node_launcher == "mpirun":
            one = dataclasses.replace(res, tasks_per_node=1, cpus_per_task=res.tasks_per_node * res.cpus_per_task)
            per_node = mpirun_argv(one, scheduler=scheduler, options=options)
        else:
            per_node = []  # one machine: torchrun starts the ranks itself
        agent = [
            *torchrun_argv(res, python=inside, rdzv_id=rdzv_id, extra=options.get("torchrun_args", ())),
            "-m",
            "hpcbridge.worker",
            folder,
        ]
        return [*per_node, *run_inside(agent)]
    raise ResourceError(f"launcher={launcher!r} is not known; use srun, mpirun, torchrun or None")


def _pyxis_srun(scheduler: str, res: Resources, options: Mapping[str, Any], container: Container) -> List[str]:
    """srun for a one-task pyxis job (no launcher chosen): pyxis runs only srun steps in containers."""
    if "srun" not in scheduler_class(scheduler).launchers:
        raise ResourceError(f"container_runtime='pyxis' needs a Slurm site (srun); this one is {scheduler!r}")
    return srun_argv(res, mpi=None, extra=[*options.get("srun_args", ()), *srun_flags(container)])


def srun_argv(res: Resources, *, mpi: Optional[str] = None, extra: Sequence[str] = ()) -> List[str]:
    """``srun`` for one task per rank; ``--kill-on-bad-exit`` so a failed rank ends the others."""
    argv = ["srun"]
    if mpi:
        argv.append(f"--mpi={mpi}")
    argv += [
        f"--nodes={res.nodes}",
        f"--ntasks={res.ntasks}",
        f"--ntasks-per-node={res.tasks_per_node}",
        f"--cpus-per-task={res.cpus_per_task}",
        "--kill-on-bad-exit=1",
    ]
    return argv + list(extra)


def srun_per_node_argv(res: Resources, *, extra: Sequence[str] = ()) -> List[str]:
    """``srun`` for one process per node that may use all the node's CPUs of the job (torchrun's agents)."""
    return [
        "srun",
        f"--nodes={res.nodes}",
        f"--ntasks={res.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={res.tasks_per_node * res.cpus_per_task}",
        "--kill-on-bad-exit=1",
        *extra,
    ]


def mpirun_argv(
    res: Resources, *, scheduler: str = "slurm", options: Optional[Mapping[str, Any]] = None
) -> List[str]:
    """``mpirun``/``mpiexec`` for ``res.tasks_per_node`` ranks on each of ``res.nodes`` nodes.

    Where the scheduler's adapter asks for it (``hostfile``: PBS), the node file is passed as ``{nodefile}``
    (filled in from ``PBS_NODEFILE`` in the job); on Slurm every flavour reads the allocation itself.
    """
    options = options or {}
    flavour = options.get("mpirun_flavour", "openmpi")
    command = list(options.get("mpirun", ["mpirun"] if flavour == "openmpi" else ["mpiexec"]))
    n, per, cpus = res.ntasks, res.tasks_per_node, res.cpus_per_task
    hostfile = scheduler_class(scheduler).hostfile
    if flavour == "openmpi":
        mapping = f"ppr:{per}:node" + (f":PE={cpus}" if cpus > 1 else "")
        argv = [*command, "-np", str(n), "--map-by", mapping]
        if hostfile:
            argv += ["--hostfile", "{nodefile}"]
    elif flavour == "mpich":
        argv = [*command, "-n", str(n), "-ppn", str(per)]
        if hostfile:
            argv += ["-f", "{nodefile}"]
    else:  # Cray PALS (PBS Pro on HPE Cray EX): mpiexec reads the PBS allocation itself
        argv = [*command, "-n", str(n), "--ppn", str(per), "--depth", str(cpus)]
    return argv + list(options.get("mpirun_args", ()))


def torchrun_argv(res: Resources, *, python: str, rdzv_id: str, extra: Sequence[str] = ()) -> List[str]:
    """One torchrun agent (``python -m torch.distributed.run``) with c10d rendezvous on the first node. With requeue
    on, ``python -m hpcbridge.torchrun_agent``: the same agent, which passes the warning on to its workers instead of
    dying of it (docs/requeue.md)."""
    return [
        python,
        "-m",
        "hpcbridge.torchrun_agent" if res.requeue else "torch.distributed.run",
        f"--nnodes={res.nodes}",
        f"--nproc-per-node={res.tasks_per_node}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint={master_addr}:{master_port}",
        f"--rdzv-id={rdzv_id}",
        "--max-restarts=0",
        *extra,
    ]

