"""Inside a job: who am I (rank, local rank, node), who are the others, and where do we meet.

``hpcbridge.environment()`` returns a :class:`JobEnvironment` built from the scheduler's and the launcher's
variables (Slurm, PBS, srun, OpenMPI/PMIx/PMI ``mpirun``, ``torchrun``) and from what hpcbridge's launch step
published (``HPCBRIDGE_MASTER_ADDR``/``HPCBRIDGE_MASTER_PORT``, also written to ``FOLDER/rdv/TASK.json``). This
module names every environment variable hpcbridge reads or sets inside a job; what differs between batch systems
is data in :mod:`hpcbridge.schedulers.allocation`.

Imported by the worker on every job start: standard library and hpcbridge's in-job modules only. The module is
called ``jobenv`` (not ``environment``) so that importing it never hides the ``hpcbridge.environment`` function.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from . import hostlist
from .errors import RendezvousError as RendezvousError  # re-exported: it lived here
from .ports import DEFAULT_PORT_RANGE as DEFAULT_PORT_RANGE  # re-exported: the port claims lived here
from .ports import PORT_CLAIM_TTL_S as PORT_CLAIM_TTL_S
from .ports import choose_port as choose_port
from .ports import port_is_free as port_is_free
from .schedulers.allocation import ALLOCATIONS, LOCAL, Allocation

# -- hpcbridge's variables: the batch script, the launch step and the worker set them for the job -----------
TASK_VAR = "HPCBRIDGE_TASK"  # the array task index (0 for a plain job)
FOLDER_VAR = "HPCBRIDGE_FOLDER"  # the job folder
RANK_VAR = "HPCBRIDGE_RANK"  # overrides the launcher's rank
WORLD_SIZE_VAR = "HPCBRIDGE_WORLD_SIZE"  # with HPCBRIDGE_RANK and no launcher: the number of ranks
LAUNCHER_VAR = "HPCBRIDGE_LAUNCHER"  # the launcher the job was planned with (srun, mpirun, torchrun)
MASTER_ADDR_VAR = "HPCBRIDGE_MASTER_ADDR"  # published by the launch step
MASTER_PORT_VAR = "HPCBRIDGE_MASTER_PORT"
BIND_GPUS_VAR = "HPCBRIDGE_BIND_GPUS"  # N: the launcher does not bind the node's N GPUs, the worker does
GPUS_BOUND_VAR = "HPCBRIDGE_GPUS_BOUND"  # "1" once the worker has narrowed CUDA_VISIBLE_DEVICES to its share
NCCL_ENV_VAR = "HPCBRIDGE_NCCL_ENV"  # the site-config's nccl table (JSON)
REQUEUE_VAR = "HPCBRIDGE_REQUEUE"  # N > 0: requeue on (docs/requeue.md), the call may be restarted N times
GRACE_VAR = "HPCBRIDGE_SIGNAL_GRACE"  # seconds from the warning (USR2) to the job's end
WARN_ON_TERM_VAR = "HPCBRIDGE_WARN_ON_TERM"  # "1": a SIGTERM warns the call too (PBS requeue: the server signals it)
DEADLINE_VAR = "HPCBRIDGE_DEADLINE"  # epoch seconds at which the job's walltime ends (set by the batch shell)
RESTART_VAR = "HPCBRIDGE_RESTART"  # this run: 0 the first, 1 after the first requeue ...
RUN_START_VAR = "HPCBRIDGE_RUN_START"  # epoch seconds at which this run's batch shell started (requeue on)
CALL_VAR = "HPCBRIDGE_CALL"  # the worker's call within its task (bundled calls), for the checkpoint's name
CLAIM_DIR_VAR = "HPCBRIDGE_PORT_CLAIM_DIR"  # node-local claims directory (default /dev/shm/hpcbridge-ports)
SAMPLE_INTERVAL_VAR = "HPCBRIDGE_SAMPLE_S"  # the in-job sampler's seconds between GPU samples (default 5)
CPUS_PER_TASK_VAR = LOCAL.cpus_per_task_vars[0]  # HPCBRIDGE_CPUS_PER_TASK: the local runner's cpus_per_task

# -- other programs' variables ---------------------------------------------------------------------------------
CUDA_VISIBLE_DEVICES_VAR = "CUDA_VISIBLE_DEVICES"
ROCR_VISIBLE_DEVICES_VAR = "ROCR_VISIBLE_DEVICES"
#: what a job in a container sees of the host's environment, names or prefixes ending in ``*``: hpcbridge's own
#: variables, a launcher's rank variables, the GPUs it was given and TMPDIR (hpcbridge.containers adds the
#: scheduler's variables, the site's env and the names the site-config and the job declare)
CONTAINER_ENV = ("HPCBRIDGE_*", "PMI*", "OMPI_*", "PRTE_*", "PALS_*", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
                 CUDA_VISIBLE_DEVICES_VAR, ROCR_VISIBLE_DEVICES_VAR, "TMPDIR")
#: torch.distributed's ``env://`` variables: torchrun sets them for its workers, hpcbridge.distributed for the rest
TORCH_MASTER_ADDR_VAR = "MASTER_ADDR"
TORCH_MASTER_PORT_VAR = "MASTER_PORT"
TORCH_RANK_VAR = "RANK"
TORCH_LOCAL_RANK_VAR = "LOCAL_RANK"
TORCH_WORLD_SIZE_VAR = "WORLD_SIZE"
TORCH_LOCAL_WORLD_SIZE_VAR = "LOCAL_WORLD_SIZE"
TORCH_GROUP_RANK_VAR = "GROUP_RANK"

#: Where each launcher puts rank, local rank, world size, node rank and local world size (first set one wins).
_SOURCES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "srun": (("SLURM_PROCID",), ("SLURM_LOCALID",), ("SLURM_NTASKS", "SLURM_NPROCS"), ("SLURM_NODEID",), ()),
    "mpirun": (
        ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PALS_RANKID"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID"),
        ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"),
        ("PALS_NODEID",),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE"),
    ),
    "torchrun": (
        (TORCH_RANK_VAR,),
        (TORCH_LOCAL_RANK_VAR,),
        (TORCH_WORLD_SIZE_VAR,),
        (TORCH_GROUP_RANK_VAR,),
        (TORCH_LOCAL_WORLD_SIZE_VAR,),
    ),
}


class JobEnvironment(NamedTuple):
    """What one process of a job needs to know to find the others."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    #: every node of the allocation, expanded and in the scheduler's order (``node[1-3]`` -> node1 node2 node3)
    nodes: Tuple[str, ...]
    hostname: str
    #: the first node (rank 0's): where a TCP store / c10d rendezvous listens
    master_addr: str
    #: a port that was free on ``master_addr`` and is not handed to another job on that node; 0 when unknown
    master_port: int
    job_id: str
    #: the array task index (0 for plain jobs)
    task: int
    scheduler: str
    launcher: Optional[str]
    cpus_per_task: int
    #: this rank's GPUs (``CUDA_VISIBLE_DEVICES``), empty when none are visible
    gpus: Tuple[str, ...]
    #: the CUDA device index this rank should use: 0 when its GPUs were narrowed to its own share, else
    #: local_rank modulo the visible GPUs
    device_index: int
    #: the job folder of an hpcbridge job ('' otherwise)
    folder: str

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def environment() -> JobEnvironment:
    """The job environment of this process (see :class:`JobEnvironment`).

    Outside a scheduler it describes a one-process job on this machine. A single-process job without a
    published master port gets a free one here (chosen once per process).
    """
    env = environment_from(os.environ, socket.gethostname())
    if env.master_port == 0 and env.world_size == 1:
        port = choose_port(job_id=env.job_id, claim_dir=os.environ.get(CLAIM_DIR_VAR))
        os.environ[MASTER_PORT_VAR] = str(port)
        env = env._replace(master_port=port)
    return env


def detect_launcher(environ: Mapping[str, str]) -> Optional[str]:
    """Which launcher started this process: hpcbridge's record of it, else the launchers' own variables."""
    named = environ.get(LAUNCHER_VAR, "").strip()
    if named in _SOURCES:
        return named
    if "OMPI_COMM_WORLD_RANK" in environ:
        return "mpirun"
    if "TORCHELASTIC_RUN_ID" in environ or (TORCH_GROUP_RANK_VAR in environ and TORCH_LOCAL_RANK_VAR in environ):
        return "torchrun"
    if "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ:  # an srun step (a batch script has no step id)
        return "srun"
    if any(v in environ for v in ("PMIX_RANK", "PMI_RANK", "PALS_RANKID")):
        return "mpirun"
    return None


def process_rank(environ: Mapping[str, str]) -> int:
    """This process's global rank (0 for a single-process job). The worker names its result file with it."""
    explicit = _int(environ, (RANK_VAR,))
    if explicit is not None:
        return explicit
    launcher = detect_launcher(environ)
    if launcher is None:
        return 0
    rank = _int(environ, _SOURCES[launcher][0])
    return 0 if rank is None else rank


def environment_from(
    environ: Mapping[str, str],
    hostname: str,
    read_text: Optional[Callable[[str], Optional[str]]] = None,
) -> JobEnvironment:
    """A :class:`JobEnvironment` from variables and a host name (files read through ``read_text``)."""
    read = read_text or _read_text
    found = allocation(environ)
    job_id, nodes = _job_id(environ, found), _nodes(environ, found, read)
    task = _first(_int(environ, (TASK_VAR,)), 0)
    if not nodes:
        nodes = [hostname]
    launcher = detect_launcher(environ)
    node_rank = node_index(nodes, hostname)
    rank, local_rank, world_size, local_world_size = 0, 0, 1, 1
    explicit_rank = _int(environ, (RANK_VAR,))
    if launcher is not None:
        rank_vars, local_vars, size_vars, node_vars, local_size_vars = _SOURCES[launcher]
        rank = _first(explicit_rank, _int(environ, rank_vars), 0)
        local_rank = _first(_int(environ, local_vars), 0)
        node_rank = _first(_int(environ, node_vars), node_rank)
        if launcher == "srun":
            counts = hostlist.tasks_per_node(
                environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or ""
            )
            local_world_size = counts[node_rank] if node_rank < len(counts) else 1
        else:
            local_world_size = _first(_int(environ, local_size_vars), 1)
        world_size = _first(_int(environ, size_vars), max(rank + 1, local_world_size))
    elif explicit_rank is not None:
        rank = explicit_rank
        world_size = _first(_int(environ, (WORLD_SIZE_VAR,)), rank + 1)
    folder = environ.get(FOLDER_VAR, "")
    master_addr, master_port = _master(environ, launcher, nodes, folder, task, read)
    gpus = tuple(d for d in environ.get(CUDA_VISIBLE_DEVICES_VAR, "").split(",") if d.strip())
    bound = environ.get(GPUS_BOUND_VAR) == "1"
    device_index = 0 if bound or not gpus else local_rank % len(gpus)
    cpus = _first(_int(environ, (*found.cpus_per_task_vars, "OMP_NUM_THREADS")), 1)
    return JobEnvironment(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        local_world_size=local_world_size,
        node_rank=max(node_rank, 0),
        num_nodes=len(nodes),
        nodes=tuple(nodes),
        hostname=hostname,
        master_addr=master_addr,
        master_port=master_port,
        job_id=job_id,
        task=task,
        scheduler=found.scheduler,
        launcher=launcher,
        cpus_per_task=cpus,
        gpus=gpus,
        device_index=device_index,
        folder=folder,
    )


# -- the allocation ---------------------------------------------------------------------------------------
def allocation(environ: Mapping[str, str]) -> Allocation:
    """The batch system this process runs under: the first of ``ALLOCATIONS`` whose job id is set, else LOCAL."""
    for candidate in ALLOCATIONS:
        if _value(environ, candidate.job_id_vars):
            return candidate
    return LOCAL


def node_file(environ: Mapping[str, str]) -> str:
    """The node file of this job ('' if there is none), for ``{nodefile}`` in a launcher's argv.

    Any allocation's node-file variable counts, not only the job's own: the PBS batch script of a Torque layer
    over Slurm (a Slurm job) writes a PBS_NODEFILE itself for mpirun.
    """
    return _value(environ, tuple(a.nodefile_var for a in (allocation(environ), *ALLOCATIONS) if a.nodefile_var))


def _job_id(environ: Mapping[str, str], found: Allocation) -> str:
    """The job id (``PARENT_INDEX`` for an array task where the allocation names both)."""
    parent, index = _value(environ, found.array_job_id_vars), _value(environ, found.array_task_id_vars)
    return f"{parent}_{index}" if parent and index else _value(environ, found.job_id_vars)


def _nodes(environ: Mapping[str, str], found: Allocation, read: Callable[[str], Optional[str]]) -> List[str]:
    """The allocation's nodes, in order, once each: from its hostlist, else from its node file."""
    spec = _value(environ, found.nodelist_vars)
    if spec or not found.nodefile_var:
        return hostlist.expand_unique(spec)
    path = environ.get(found.nodefile_var, "")
    text = read(path) if path else None
    return nodes_from_nodefile(text or "")


def nodes_from_nodefile(text: str) -> List[str]:
    """The nodes of a node file (PBS's: one line per slot, a node repeated per slot), in order, once each."""
    return hostlist.unique(line.strip() for line in text.splitlines() if line.strip())


def node_index(nodes: List[str], hostname: str) -> int:
    if hostname in nodes:
        return nodes.index(hostname)
    short = hostname.split(".", 1)[0]
    for i, node in enumerate(nodes):
        if node.split(".", 1)[0] == short:
            return i
    return 0


# -- master address and port ------------------------------------------------------------------------------
def _master(
    environ: Mapping[str, str],
    launcher: Optional[str],
    nodes: List[str],
    folder: str,
    task: int,
    read: Callable[[str], Optional[str]],
) -> Tuple[str, int]:
    torch_addr, torch_port = environ.get(TORCH_MASTER_ADDR_VAR), environ.get(TORCH_MASTER_PORT_VAR, "")
    if launcher == "torchrun" and torch_addr and torch_port.isdigit():
        return torch_addr, int(torch_port)  # torchrun's own store for its workers
    addr = environ.get(MASTER_ADDR_VAR) or nodes[0]
    port = _first(_int(environ, (MASTER_PORT_VAR,)), 0)
    if port == 0 and folder:
        published = read(rendezvous_path(folder, task))
        if published:
            import json  # here: the worker's start (which only asks for the rank) does not need it

            try:
                record = json.loads(published)
                addr, port = str(record["addr"]), int(record["port"])
            except (ValueError, KeyError, TypeError):
                pass
    return addr, port


def rendezvous_path(folder: str, task: int) -> str:
    """Where the launch step publishes the master address and port of a task."""
    from .store import JobFolder

    return JobFolder(folder).rendezvous(task)


# -- helpers -----------------------------------------------------------------------------------------------
def _int(environ: Mapping[str, str], names: Tuple[str, ...]) -> Optional[int]:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _value(environ: Mapping[str, str], names: Tuple[str, ...]) -> str:
    """The first of ``names`` that is set and not empty ('' if none is)."""
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return ""


def _first(*values: Optional[int]) -> int:
    for v in values:
        if v is not None:
            return v
    return 0


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None
