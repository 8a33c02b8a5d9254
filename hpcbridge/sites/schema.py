"""The site-config schema: every key, its type and meaning; validation that names the file and line (pure).

This table is the one source of truth for what a site-config may hold: every layer is validated against it,
``hpcbridge sites show`` prints in its order, and docs/site-configs.md documents it (a unit test checks that every
key here is documented there and that every :class:`~hpcbridge.sites.Site` field has a key here).
Adding a key: one line here, one field on ``Site`` (model.py), one row in docs/site-configs.md.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError, ResourceError
from ..schedulers import SCHEDULERS
from ..spec import (
    CONTAINER_RUNTIMES,
    RESOURCE_NAMES,
    Resources,
    did_you_mean,
    parse_mem_gb,
    parse_walltime,
    resources_from,
)
from .source import Source

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PARTITION_NAME = re.compile(r"^[A-Za-z0-9_.+\-]+$")
#: a site's name: it names the file ``NAME.toml``, the ``[sites.NAME]`` table and ``--site NAME``
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a site-config.

    ``kind``: ``str int number bool strlist walltime mem env table map resources``. ``table`` has fixed ``keys``;
    ``map`` is a table of named entries, each a table with ``keys`` (partitions); ``env`` maps variable names to
    strings; ``resources`` holds resource requests (the ``defaults`` table). ``above``: the value must be more
    than ``minimum`` (not equal to it); ``unit`` names it in the message.
    """

    kind: str
    doc: str
    choices: Tuple[Any, ...] = ()
    minimum: Optional[float] = None
    keys: Optional[Mapping[str, Key]] = None
    above: bool = False
    unit: str = ""


PARTITION: Dict[str, Key] = {
    "max_nodes": Key("int", "most nodes one job may ask for", minimum=1),
    "cpus_per_node": Key("int", "CPUs per node: tasks_per_node x cpus_per_task may not exceed it", minimum=1),
    "mem_gb_per_node": Key("mem", "memory per node in GB: mem_gb (per node) may not exceed it"),
    "gpus_per_node": Key("int", "GPUs per node; 0 for a CPU-only partition", minimum=0),
    "gpu_type": Key("str", "GPU model, e.g. 'a100' (shown by `hpcbridge sites show`)"),
    "max_walltime": Key("walltime", "longest walltime, e.g. '2-00:00:00'"),
    "default": Key("bool", "the scheduler's default partition: its limits apply to jobs that name no partition"),
    "description": Key("str", "one line for users"),
    "requeue": Key("bool", "whether jobs here may be requeued (requeue=N, docs/requeue.md); default true"),
}

SSH: Dict[str, Key] = {
    "host": Key("str", "login host or ~/.ssh/config alias"),
    "user": Key("str", "user name on the cluster (default: ~/.ssh/config, then the local user)"),
    "port": Key("int", "SSH port", minimum=1),
    "identity_file": Key("str", "private key file"),
    "proxy_jump": Key("str", "bastion host(s), as OpenSSH's ProxyJump"),
    "known_hosts": Key("str", "known_hosts file (default ~/.ssh/known_hosts)"),
    "config_file": Key("str", "OpenSSH client config (default ~/.ssh/config)"),
    "connect_timeout_s": Key("number", "seconds to wait for the connection (more than 0)", minimum=0, above=True,
                             unit="seconds"),
    "keepalive_s": Key("number", "seconds between keepalives (0: none)", minimum=0),
}

SLURM: Dict[str, Key] = {
    "mpi": Key("str", "`srun --mpi=` value for MPI jobs (pmix, pmi2, none)"),
    "gpu_directive": Key("str", "how GPUs are asked for", choices=("gpus-per-node", "gres")),
    "srun_args": Key("strlist", "extra srun arguments for launcher='srun' and torchrun's per-node srun"),
}

CONTAINER: Dict[str, Key] = {
    "runtime": Key("str", "container runtime (docs/containers.md)", choices=CONTAINER_RUNTIMES),
    "image": Key("str", "default image (path on the cluster or URI); container=None opts out"),
    "binds": Key("strlist", "bind mounts, 'src[:dst[:opts]]'"),
    "options": Key("strlist", "extra runtime options, e.g. ['--writable-tmpfs']"),
    "env": Key("strlist", "variables (or 'PREFIX*') jobs may see inside the container besides the allow-list"),
    "gpu": Key("str", "the GPUs' vendor: apptainer/singularity --nv or --rocm when GPUs are asked (default nvidia)",
               choices=("nvidia", "amd")),
    "python": Key("str", "the python inside the image (default python3)"),
    "check": Key("bool", "check each image on the login node before its first job (default true)"),
}

MPI: Dict[str, Key] = {
    "mpirun": Key("str", "the mpirun command of the cluster's MPI (launcher='mpirun')"),
    "args": Key("strlist", "extra arguments for the MPI launcher"),
    "env": Key("env", "the MPI's environment, e.g. OMPI_MCA_btl: exported in every job (any launcher or none; "
                      "over [env] where both set a variable)"),
    "flavour": Key("str", "the MPI's launcher flags (mpirun -np/--map-by or mpiexec -n/-ppn)",
                   choices=("openmpi", "mpich", "pals")),
}

DISTRIBUTED: Dict[str, Key] = {
    "master_port_min": Key("int", "lowest master/rendezvous port tried on the first node (default 20000)",
                           minimum=1024),
    "master_port_max": Key("int", "highest master/rendezvous port tried (default 32767)", minimum=1024),
    "bind_gpus": Key("bool", "give each local rank its share of CUDA_VISIBLE_DEVICES under srun/mpirun "
                             "(default true)"),
    "torchrun_args": Key("strlist", "extra torchrun arguments (launcher='torchrun')"),
}

#: Every top-level key, in the order `hpcbridge sites show` prints them.
SCHEMA: Dict[str, Key] = {
    "description": Key("str", "one line for `hpcbridge sites list`"),
    "scheduler": Key("str", "the batch system", choices=tuple(SCHEDULERS)),
    "flavour": Key("str", "variant of the batch system: PBS only, pbspro (default) or torque",
                   choices=("", "pbspro", "torque")),
    "transport": Key("str", "how commands reach the cluster", choices=("local", "ssh")),
    "ssh": Key("table", "connection settings when transport = 'ssh'", keys=SSH),
    "python": Key("str", "the cluster-side python (same major.minor as the client, with hpcbridge installed)"),
    "workdir": Key("str", "cluster-side folder for job files (shared with the compute nodes)"),
    "accounting": Key("bool", "Slurm: slurmdbd present, status via sacct (else squeue + scontrol); PBS Pro: job "
                              "history kept, qstat -x (else a job gone from qstat has ended)"),
    "max_array_size": Key("int", "most tasks in one array job; longer maps are split", minimum=1),
    "poll_interval_min_s": Key("number", "shortest time between status checks", minimum=0.01),
    "poll_interval_max_s": Key("number", "longest time between scheduler queries (back-off cap)", minimum=0.01),
    "result_grace_s": Key(
        "number", "how long a finished job's result file may take to show on the shared filesystem", minimum=0
    ),
    "right_size": Key("bool", "Executor(right_size=...)'s default: size each function's jobs from the registry's "
                              "history of its earlier runs (docs/usage-advice.md)"),
    "local_parallel": Key("int", "local site: tasks run at once (0: as many as this machine's CPUs hold, "
                                 "cpus_per_task x tasks_per_node each)", minimum=0),
    "modules": Key("strlist", "`module load` lines at the top of every job"),
    "setup": Key("strlist", "shell lines run before the worker (written verbatim)"),
    "templates": Key("strlist", "folders searched for template overrides before the built-in ones"),
    "defaults": Key("resources", "default resources: any Executor keyword (partition, account, qos, walltime ...)"),
    "partitions": Key("map", "partitions (queues) and their limits, checked before submission", keys=PARTITION),
    "env": Key("env", "environment variables exported in every job"),
    "slurm": Key("table", "Slurm specifics", keys=SLURM),
    "container": Key("table", "container runtime, image and binds", keys=CONTAINER),
    "mpi": Key("table", "MPI launcher settings", keys=MPI),
    "nccl": Key("env", "NCCL_* variables for multi-node GPU jobs (NCCL_SOCKET_IFNAME, NCCL_IB_HCA ...)"),
    "distributed": Key("table", "multi-node jobs: master port range, GPU binding, torchrun", keys=DISTRIBUTED),
}

#: Keys of the project file (hpcbridge.toml) besides its per-site tables.
PROJECT_KEYS = ("default_site", "sites")


# -- validation -------------------------------------------------------------------------------------------------
def dotted(keypath: Sequence[str]) -> str:
    return ".".join(keypath)


def _fail(src: Optional[Source], keypath: Sequence[str], message: str, name_key: bool = True) -> ConfigError:
    where = src.where(keypath) if src is not None else "site-config"
    key = dotted(keypath)
    return ConfigError(f"{where}: {key + ': ' if key and name_key else ''}{message}")


def _unknown(src: Optional[Source], keypath: Tuple[str, ...], key: str, valid: Sequence[str]) -> ConfigError:
    table = f"[{dotted(keypath)}]" if keypath else "the top level"
    message = f"unknown key {key!r} in {table}{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}"
    return _fail(src, keypath + (key,), message, name_key=False)


def validate(data: Mapping[str, Any], src: Optional[Source] = None) -> None:
    """Check one layer's keys and value types against :data:`SCHEMA`; raise :class:`ConfigError` with file:line."""
    _check_table(data, SCHEMA, (), src)


def check_project(data: Mapping[str, Any], src: Source) -> None:
    """Check a project file's shape: ``default_site = "NAME"`` and ``[sites.NAME]`` tables only."""
    for key in data:
        if key not in PROJECT_KEYS:
            raise ConfigError(
                f"{src.where((key,))}: unknown key {key!r} in the project file{did_you_mean(key, PROJECT_KEYS)}; "
                f"a project file holds default_site = \"NAME\" and [sites.NAME] tables"
            )
    if "default_site" in data and not isinstance(data["default_site"], str):
        raise ConfigError(f"{src.where(('default_site',))}: default_site must be a site name (a string)")
    sites = data.get("sites", {})
    if not isinstance(sites, dict) or not all(isinstance(v, dict) for v in sites.values()):
        raise ConfigError(f"{src.where(('sites',))}: sites must hold one table per site: [sites.NAME]")
    for name in sites:
        problem = site_name_problem(name)
        if problem:
            raise ConfigError(f"{src.where(('sites', name))}: [sites.{name}]: {problem}")


def site_name_problem(name: Any) -> str:
    """Why ``name`` cannot be a site's name, with a name that can ("" when it can)."""
    if isinstance(name, str) and SITE_NAME.match(name):
        return ""
    fixed = re.sub(r"[^A-Za-z0-9_.\-]+", "-", name).strip("-_.") if isinstance(name, str) else ""
    suggestion = f", e.g. {fixed!r}" if fixed and SITE_NAME.match(fixed) else ""
    return (
        f"site name {name!r} is not valid: a site name holds letters, digits and . _ - and starts with a letter or "
        f"digit (it names the file NAME.toml){suggestion}"
    )


def _check_table(
    data: Mapping[str, Any], schema: Mapping[str, Key], path: Tuple[str, ...], src: Optional[Source]
) -> None:
    valid = list(schema)
    for key, value in data.items():
        spec = schema.get(key)
        if spec is None:
            raise _unknown(src, path, key, valid)
        check_value(value, spec, path + (key,), src)


def check_value(value: Any, spec: Key, path: Tuple[str, ...], src: Optional[Source]) -> None:
    kind = spec.kind
    if kind == "str":
        if not isinstance(value, str):
            raise _fail(src, path, f"must be a string, got {_show(value)}")
        if spec.choices and value not in spec.choices:
            shown = ", ".join(repr(c) for c in spec.choices)
            raise _fail(src, path, f"{value!r} is not one of {shown}{did_you_mean(value, spec.choices)}")
    elif kind in ("int", "number"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            what = "a whole number" if kind == "int" else "a number"
            raise _fail(src, path, f"must be {what}, got {_show(value)}")
        unit = f" {spec.unit}" if spec.unit else ""
        if spec.minimum is not None and spec.above and value <= spec.minimum:
            raise _fail(src, path, f"must be more than {spec.minimum:g}{unit}, got {value!r}")
        if spec.minimum is not None and value < spec.minimum:
            raise _fail(src, path, f"must be >= {spec.minimum:g}{unit}, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _fail(src, path, f"must be true or false, got {_show(value)}")
    elif kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(src, path, f"must be a list of strings such as [\"a\", \"b\"], got {_show(value)}")
    elif kind == "walltime":
        try:
            parse_walltime(value)
        except ResourceError as exc:
            raise _fail(src, path, str(exc).replace("walltime=", "", 1)) from None
    elif kind == "mem":
        try:
            parse_mem_gb(value)
        except ResourceError as exc:
            raise _fail(src, path, str(exc).replace("mem_gb=", "", 1)) from None
    elif kind == "env":
        _need_table(value, path, src)
        for name, item in value.items():
            if not ENV_NAME.match(name):
                raise _fail(src, path + (name,), f"{name!r} is not a valid environment variable name")
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise _fail(src, path + (name,), f"must be a string (or a number), got {_show(item)}")
    elif kind == "table":
        _need_table(value, path, src)
        assert spec.keys is not None
        _check_table(value, spec.keys, path, src)
    elif kind == "map":
        _need_table(value, path, src)
        assert spec.keys is not None
        for name, entry in value.items():
            if not PARTITION_NAME.match(name):
                raise _fail(src, path + (name,), f"{name!r} may hold letters, digits and . _ + - only")
            _need_table(entry, path + (name,), src)
            _check_table(entry, spec.keys, path + (name,), src)
    elif kind == "resources":
        _need_table(value, path, src)
        for name, item in value.items():
            if name not in RESOURCE_NAMES:
                raise _unknown(src, path, name, RESOURCE_NAMES)
            try:
                resources_from(Resources(), {name: item})
            except ResourceError as exc:
                raise _fail(src, path + (name,), str(exc)) from None
    else:  # pragma: no cover - a schema bug
        raise AssertionError(f"unknown kind {kind!r}")


def _need_table(value: Any, path: Tuple[str, ...], src: Optional[Source]) -> None:
    if not isinstance(value, Mapping):
        raise _fail(src, path, f"must be a table ([{dotted(path)}] or {{ key = value }}), got {_show(value)}")


def _show(value: Any) -> str:
    kinds = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "a table"}
    return f"{kinds.get(type(value), type(value).__name__)} ({value!r})"


def walk(schema: Mapping[str, Key], prefix: Tuple[str, ...] = ()) -> List[Tuple[Tuple[str, ...], Key]]:
    """Every key path of the schema (map entries as ``<name>``), for docs and their test."""
    out: List[Tuple[Tuple[str, ...], Key]] = []
    for name, spec in schema.items():
        path = prefix + (name,)
        out.append((path, spec))
        if spec.kind == "table" and spec.keys:
            out.extend(walk(spec.keys, path))
        elif spec.kind == "map" and spec.keys:
            out.extend(walk(spec.keys, path + ("<name>",)))
    return out
