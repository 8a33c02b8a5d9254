"""Inside a job: who am I (rank, local rank, node), who are the others, and where do we meet.

``hpcbridge.environment()`` returns a :class:`JobEnvironment` built from the scheduler's and the launcher's
variables (Slurm, PBS, srun, OpenMPI/PMIx/PMI ``mpirun``, ``torchrun``) and from what hpcbridge's launch step
published (``HPCBRIDGE_MASTER_ADDR``/``HPCBRIDGE_MASTER_PORT``, also written to ``FOLDER/rdv/TASK.json``).

Imported by the worker on every job start: standard library and :mod:`hpcbridge.hostlist` only. The module is
called ``jobenv`` (not ``environment``) so that importing it never hides the ``hpcbridge.environment`` function.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from . import hostlist

LAUNCHER_VAR = "HPCBRIDGE_LAUNCHER"
MASTER_ADDR_VAR = "HPCBRIDGE_MASTER_ADDR"
MASTER_PORT_VAR = "HPCBRIDGE_MASTER_PORT"
BIND_GPUS_VAR = "HPCBRIDGE_BIND_GPUS"
FOLDER_VAR = "HPCBRIDGE_FOLDER"
GPUS_BOUND_VAR = "HPCBRIDGE_GPUS_BOUND"
CLAIM_DIR_VAR = "HPCBRIDGE_PORT_CLAIM_DIR"  # node-local claims directory (default /dev/shm/hpcbridge-ports)

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
    "torchrun": (("RANK",), ("LOCAL_RANK",), ("WORLD_SIZE",), ("GROUP_RANK",), ("LOCAL_WORLD_SIZE",)),
}

#: A port claim lasts exactly as long as the lock on its file (see _claim). This is the lifetime of a claim
#: an older hpcbridge made (no lock, so judged by age and pid), and the age after which this user's unused claim
#: files are deleted (younger ones are taken over in place).
PORT_CLAIM_TTL_S = 600.0
_CLAIM_MARK = "flock"  # the last field of a claim that holds by its lock; a claim without it is an older one's
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_held: Dict[int, int] = {}  # port -> the locked descriptor of a claim this process holds
DEFAULT_PORT_RANGE = (20000, 32767)  # below Linux's ephemeral range (32768-60999): no outgoing socket holds it


class RendezvousError(RuntimeError):
    """No master address or port could be found or chosen."""


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
        port = choose_port(job_id=env.job_id)
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
    if "TORCHELASTIC_RUN_ID" in environ or ("GROUP_RANK" in environ and "LOCAL_RANK" in environ):
        return "torchrun"
    if "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ:  # an srun step (a batch script has no step id)
        return "srun"
    if any(v in environ for v in ("PMIX_RANK", "PMI_RANK", "PALS_RANKID")):
        return "mpirun"
    return None


def process_rank(environ: Mapping[str, str]) -> int:
    """This process's global rank (0 for a single-process job). The worker names its result file with it."""
    explicit = _int(environ, ("HPCBRIDGE_RANK",))
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
    scheduler, job_id, nodes, task = _allocation(environ, read)
    if not nodes:
        nodes = [hostname]
    launcher = detect_launcher(environ)
    node_rank = node_index(nodes, hostname)
    rank, local_rank, world_size, local_world_size = 0, 0, 1, 1
    explicit_rank = _int(environ, ("HPCBRIDGE_RANK",))
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
        world_size = _first(_int(environ, ("HPCBRIDGE_WORLD_SIZE",)), rank + 1)
    folder = environ.get(FOLDER_VAR, "")
    master_addr, master_port = _master(environ, launcher, nodes, folder, task, read)
    gpus = tuple(d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip())
    bound = environ.get(GPUS_BOUND_VAR) == "1"
    device_index = 0 if bound or not gpus else local_rank % len(gpus)
    cpus = _first(_int(environ, ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")), 1)
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
        scheduler=scheduler,
        launcher=launcher,
        cpus_per_task=cpus,
        gpus=gpus,
        device_index=device_index,
        folder=folder,
    )


# -- the allocation ---------------------------------------------------------------------------------------
def _allocation(
    environ: Mapping[str, str], read: Callable[[str], Optional[str]]
) -> Tuple[str, str, List[str], int]:
    """(scheduler, job id, node list, array task) of the job this process runs in."""
    task = _first(_int(environ, ("HPCBRIDGE_TASK",)), 0)
    if environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"):
        job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or ""
        if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
            job_id = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
        spec = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or ""
        return "slurm", job_id, hostlist.expand_unique(spec), task
    if environ.get("PBS_JOBID"):
        path = environ.get("PBS_NODEFILE", "")
        text = read(path) if path else None
        return "pbs", environ["PBS_JOBID"], nodes_from_nodefile(text or ""), task
    return "local", "", [], task


def nodes_from_nodefile(text: str) -> List[str]:
    """The nodes of a PBS_NODEFILE (one line per slot, a node repeated per slot), in order, once each."""
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
    if launcher == "torchrun" and environ.get("MASTER_ADDR") and environ.get("MASTER_PORT", "").isdigit():
        return environ["MASTER_ADDR"], int(environ["MASTER_PORT"])  # torchrun's own store for its workers
    addr = environ.get(MASTER_ADDR_VAR) or nodes[0]
    port = _first(_int(environ, (MASTER_PORT_VAR,)), 0)
    if port == 0 and folder:
        published = read(rendezvous_path(folder, task))
        if published:
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


def choose_port(
    port_range: Tuple[int, int] = DEFAULT_PORT_RANGE,
    *,
    job_id: str = "",
    claim_dir: Optional[str] = None,
    attempts: int = 200,
) -> int:
    """A TCP port that binds on this node now and that no other running hpcbridge job on this node was given.

    Candidates are drawn at random from ``port_range``; each is claimed with a locked file in a node-local
    directory shared by every user (``/dev/shm/hpcbridge-ports``), then bind-tested on every address (IPv4 and
    IPv6, with SO_REUSEADDR as torch's store binds: see :func:`port_is_free`). Two jobs starting together on one
    node therefore never get the same port, unlike a port derived from the job id. The claim is held by this
    process and survives its exec (the launch step becomes the launcher): it ends when they have exited. With
    every port of the range taken it raises :class:`RendezvousError` (it does not wait for one).
    """
    import random

    lo, hi = port_range
    if not (0 < lo <= hi < 65536):
        raise RendezvousError(f"port range {lo}-{hi} is not within 1-65535")
    claims = _claim_dir(claim_dir)
    if claims:
        _clean_stale_claims(claims)
    # who has the claim (one record for every port tried: informational, liveness is the lock's)
    record = (
        f"{job_id or '-'} {socket.gethostname()} {os.getpid()} {time.time():.3f} {_pid_namespace()} {_CLAIM_MARK}\n"
    ).encode()
    rng = random.SystemRandom()
    tried = set()
    for _ in range(attempts):
        port = rng.randint(lo, hi)
        if port in tried:
            continue
        tried.add(port)
        if claims and not _claim(claims, port, record):
            continue
        if port_is_free(port):
            return port
        if claims:
            _unclaim(claims, port)
    raise RendezvousError(
        f"no free TCP port found in {lo}-{hi} on {socket.gethostname()} after {len(tried)} tries (each one "
        "in use or claimed by another running job); widen [distributed] master_port_min/master_port_max in "
        "the site-config to a range open on the compute nodes"
    )


def port_is_free(port: int) -> bool:
    """True if ``port`` binds on every IPv4 (and, where there is IPv6, every IPv6) address right now.

    With SO_REUSEADDR, as torch's TCPStore (c10d) binds its port: a port whose last connections are in TIME_WAIT
    (for 60 s after a job's store closed) is free for the next store, and only a live listener makes it busy."""
    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, any_addr in families:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this node
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((any_addr, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue
            return False
        finally:
            sock.close()
    return True


def _claim_dir(preferred: Optional[str]) -> Optional[str]:
    preferred = preferred or os.environ.get(CLAIM_DIR_VAR) or None
    for base in ([preferred] if preferred else ["/dev/shm", "/tmp"]):
        path = os.path.join(base, "hpcbridge-ports") if not preferred else base
        try:
            os.mkdir(path, 0o1777)
            os.chmod(path, 0o1777)  # umask: every user's jobs claim here
        except FileExistsError:
            pass
        except OSError:
            continue
        if os.path.isdir(path) and not os.path.islink(path) and os.access(path, os.W_OK | os.X_OK):
            return path
    return None


def _claim(claims: str, port: int, record: bytes) -> bool:
    """Claim ``port`` for this process and what it execs into (the file says ``record``: who has it); False while
    another job holds it.

    A claim is the file ``claims/PORT`` locked with flock(LOCK_EX) on a descriptor this process keeps open and
    inheritable: the claim lasts until the launch step (which execs the launcher, keeping the descriptor) or
    the worker has exited, however it ends (the kernel drops the lock), and no longer. Whether a claim is live
    is only ever asked of the lock, and the lock is also how a claim is taken, so there is no check-then-act
    window: a new claim is locked before it appears under its name (written under a temporary name, then
    hard-linked to ``PORT``, which fails if that exists); a claim nobody holds is taken over by locking that
    same file with LOCK_NB (of any number of jobs trying at once exactly one gets it), never by deleting the
    name and creating it again (then a second job, having seen the same dead claim, deletes the first one's
    fresh claim and both get the port). Under the lock the name must still be that file (a cleanup or an
    unclaim may have removed it meanwhile: then look again). flock needs only read access, so another user's
    claim in the sticky directory is taken over too once its job has ended, as it is (it cannot be rewritten).
    """
    path = os.path.join(claims, str(port))
    for _ in range(5):  # each round ends in a claim, a live holder, or a file that changed under us (again)
        try:
            fd = _new_claim(claims, path, record)
        except OSError:
            return True  # no claims here (no flock or hard links on this filesystem): rely on the bind test alone
        if fd is None:  # the name exists: ours if nobody holds it
            fd, changed = _lock_unheld(path)
            if fd is None:
                if changed:
                    continue
                return False
            if not _unheld_claim_is_stale(fd):  # an older hpcbridge's claim that is live by its rules
                os.close(fd)
                return False
            try:  # ours: say who has it now (another user's file is read-only to us and stays as it is)
                os.ftruncate(fd, 0)
                os.pwrite(fd, record, 0)
            except OSError:
                pass
        os.set_inheritable(fd, True)  # Python opens with O_CLOEXEC: the lock must survive the exec of the launcher
        _held[port] = fd
        return True
    return False


def _new_claim(claims: str, path: str, record: bytes) -> Optional[int]:
    """A new claim of ``path``, locked before it appears under that name; None if the name exists."""
    import fcntl

    tmp = os.path.join(claims, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: other users' jobs must be able to open it to test the lock
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file nobody else has opened: never blocks
        os.write(fd, record)
        os.link(tmp, path)  # atomic: fails if the name exists (lsof names the descriptor by `tmp`, deleted)
        linked = True
    except FileExistsError:
        linked = False
    except BaseException:
        os.close(fd)
        _remove(tmp)
        raise
    _remove(tmp)
    if not linked:
        os.close(fd)
        return None
    return fd


def _lock_unheld(path: str) -> Tuple[Optional[int], bool]:
    """(descriptor, changed): the claim file ``path`` locked by us, because nobody else held it; (None, False)
    while someone holds it or when it is no claim we can test (a symlink, a FIFO, unreadable, no flock here);
    (None, True) when it was removed or replaced while we looked."""
    import fcntl

    flags = _NOFOLLOW | os.O_NONBLOCK  # O_NONBLOCK: a FIFO planted under the name must not hang us
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags)
        except PermissionError:  # another user's claim: flock needs only read access
            fd = os.open(path, os.O_RDONLY | flags)
    except FileNotFoundError:
        return None, True
    except OSError:
        return None, False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        same = _same_file(fd, path)
    except FileNotFoundError:
        os.close(fd)
        return None, True
    except OSError:  # BlockingIOError: its job is running
        os.close(fd)
        return None, False
    if not same:
        os.close(fd)
        return None, True
    return fd, False


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed and made again meanwhile); OSError when
    ``path`` is gone."""
    st, now = os.fstat(fd), os.lstat(path)
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _unheld_claim_is_stale(fd: int) -> bool:
    """Of a claim file we have locked: True if it is free. Ours are (nobody held the lock); an older hpcbridge's
    claim, which it never locked, holds for PORT_CLAIM_TTL_S or until the process that made it has exited."""
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace")
        mtime = os.fstat(fd).st_mtime
    except OSError:
        return False
    fields = text.split()
    if len(fields) == 6 and fields[5] == _CLAIM_MARK:
        return True
    return time.time() - mtime >= PORT_CLAIM_TTL_S or _claim_owner_gone(text)


def _claim_owner_gone(text: str) -> bool:
    """True only when the claim was made on this host, in this pid namespace, by a process that is gone.

    Anything else (another host's claim in a shared directory, another pid namespace, an older claim format,
    a process of another user: kill says EPERM) counts as alive, leaving the TTL to end the claim.
    """
    fields = text.split()
    if len(fields) != 5 or not fields[2].isdigit():
        return False
    _, host, pid, _, pidns = fields
    if host != socket.gethostname() or pidns != _pid_namespace():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. pid:[4026531836]
    except OSError:
        return "-"


def _unclaim(claims: str, port: int) -> None:
    """Give up a claim this process holds: its file goes (while still locked, so nobody is taking it over)."""
    fd = _held.pop(port, None)
    if fd is None:
        return
    path = os.path.join(claims, str(port))
    try:
        if _same_file(fd, path):
            os.unlink(path)  # another user's file taken over stays (sticky directory): it is free once closed
    except OSError:
        pass
    os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _clean_stale_claims(claims: str, limit: int = 1000) -> None:
    """Delete this user's claim files that are free and unused for PORT_CLAIM_TTL_S (and temporary files left by
    a crash). Younger free claims are left to be taken over in place: deleting one races with nothing, but a
    job testing its lock while we hold it would skip the port. Other users' files stay (the directory is sticky);
    they are taken over in place once free."""
    now = time.time()
    uid = os.getuid()
    try:
        with os.scandir(claims) as it:
            for i, entry in enumerate(it):
                if i >= limit:
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_uid != uid or now - st.st_mtime < PORT_CLAIM_TTL_S:
                    continue
                fd, _ = _lock_unheld(entry.path)
                if fd is None:
                    continue
                if entry.name.startswith(".") or _unheld_claim_is_stale(fd):
                    _remove(entry.path)  # under the lock: see _unclaim
                os.close(fd)
    except OSError:
        pass


# -- GPUs --------------------------------------------------------------------------------------------------
def gpu_share(visible: List[str], local_rank: int, local_world_size: int) -> Optional[List[str]]:
    """This local rank's share of the node's GPUs, or None when they cannot be split evenly (left alone).

    4 GPUs, 4 ranks -> one each; 8 GPUs, 4 ranks -> two each; 2 GPUs, 4 ranks -> None (ranks share).
    """
    if local_world_size <= 1 or not visible or len(visible) % local_world_size:
        return None
    per = len(visible) // local_world_size
    return visible[local_rank * per : (local_rank + 1) * per]


def bind_gpus(environ: Optional[Dict[str, str]] = None) -> Optional[List[str]]:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to this local rank's share (before CUDA starts); returns the share.

    Used by the worker when ``HPCBRIDGE_BIND_GPUS=N`` (N GPUs per node) says the launcher does not bind GPUs
    itself. Without ``CUDA_VISIBLE_DEVICES`` the node's GPUs are taken to be 0..N-1.
    """
    env = os.environ if environ is None else environ
    per_node = _first(_int(env, (BIND_GPUS_VAR,)), 0)
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        visible = [str(i) for i in range(per_node)]
    job = environment_from(env, socket.gethostname())
    share = gpu_share(visible, job.local_rank, job.local_world_size)
    if share is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(share)
        env[GPUS_BOUND_VAR] = "1"
    return share


# -- helpers -----------------------------------------------------------------------------------------------
def _int(environ: Mapping[str, str], names: Tuple[str, ...]) -> Optional[int]:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


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
