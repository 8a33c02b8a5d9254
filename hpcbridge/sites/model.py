"""The :class:`Site` record and how one is built from merged TOML data, with the checks of the whole (pure).

Layers are validated one by one against the schema; what needs the merged site (defaults against partition limits,
interval order, ssh needing a host and ``[ssh]`` needing ssh, the flavour against the scheduler, the master port
range) is checked here, once, naming the layer that set the offending key.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import ConfigError, ResourceError
from ..ports import DEFAULT_PORT_RANGE
from ..schedulers import SCHEDULERS, scheduler_class
from ..spec import Resources, parse_mem_gb, parse_walltime, resources_from
from .limits import Partition, check_limits, check_requeue, default_partition
from .schema import SCHEMA, validate

#: the origin of a key no layer set
BUILTIN = "built-in default"


@dataclasses.dataclass(frozen=True)
class Site:
    """A cluster as hpcbridge sees it."""

    name: str
    scheduler: str = "slurm"
    flavour: str = ""
    transport: str = "local"
    ssh: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    python: str = "python3"
    workdir: str = "~/.hpcbridge/jobs"
    accounting: bool = True
    max_array_size: int = 1000
    poll_interval_min_s: float = 0.5
    poll_interval_max_s: float = 60.0
    result_grace_s: float = 5.0
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    partitions: Mapping[str, Partition] = dataclasses.field(default_factory=dict)
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    modules: Tuple[str, ...] = ()
    setup: Tuple[str, ...] = ()
    templates: Tuple[str, ...] = ()
    slurm: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    container: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mpi: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    nccl: Mapping[str, str] = dataclasses.field(default_factory=dict)
    distributed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    local_parallel: int = 0
    #: ``Executor(right_size=None)`` takes this: jobs sized from their function's earlier runs
    right_size: bool = False
    description: str = ""
    #: the files (layers) that define this site, lowest precedence first
    origin: Tuple[str, ...] = ()
    #: dotted key -> where its value came from (``file:line``, ``built-in default``, ``keyword argument``)
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def default_resources(self) -> Resources:
        return resources_from(Resources(), dict(self.defaults))

    def default_partition(self) -> Optional[str]:
        """The partition a job that names none lands in, when the site-config says."""
        return default_partition(self.partitions)

    def check_resources(self, res: Resources) -> None:
        """Raise :class:`ResourceError` for a resource the site's scheduler cannot give (its adapter's
        ``check_resources``: the local site has no partitions, accounts, QOS, GPUs or directives), or when ``res``
        exceeds its partition's limits, naming partitions that fit."""
        scheduler_class(self.scheduler).check_resources(res)
        check_limits(self.name, self.partitions, res)
        check_requeue(self.name, self.partitions, res)

    def where(self, key: str) -> str:
        """Where ``key`` (dotted) was set; for messages."""
        return self.origins.get(key) or (self.origin[-1] if self.origin else f"site {self.name!r}")


#: The built-in ``local`` site's settings: jobs run as processes on this machine, no scheduler needed.
LOCAL_DATA: Mapping[str, Any] = {
    "scheduler": "local",
    "python": sys.executable,
    "workdir": "~/.hpcbridge/local",
    "poll_interval_min_s": 0.1,
    "poll_interval_max_s": 2.0,
    "description": "this machine, no scheduler",
}


def builtin_local() -> Site:
    """The built-in ``local`` site alone, without the layers that may tune it."""
    return Site(name="local", origin=("built-in",), **LOCAL_DATA)


def site_from_mapping(
    name: str,
    data: Mapping[str, Any],
    origin: Tuple[str, ...] = (),
    origins: Optional[Mapping[str, str]] = None,
) -> Site:
    """Build and validate a :class:`Site` from parsed (and merged) TOML."""
    if origins is None:  # not through load_site: validate here, locations unknown
        validate(data, None)
    fields: Dict[str, Any] = dict(data)
    fields["partitions"] = {
        pname: Partition(name=pname, **_partition_fields(pdata))
        for pname, pdata in dict(data.get("partitions", {})).items()
    }
    for key in ("modules", "setup", "templates"):
        if key in fields:
            fields[key] = tuple(fields[key])
    for key in ("env", "nccl"):
        fields[key] = {k: str(v) for k, v in dict(fields.get(key, {})).items()}
    for key in ("ssh", "slurm", "container", "mpi", "distributed", "defaults"):
        if key in fields:
            fields[key] = dict(fields[key])
    if "env" in fields.get("mpi", {}):
        fields["mpi"]["env"] = {k: str(v) for k, v in dict(fields["mpi"]["env"]).items()}
    full_origins = {f"{p}": BUILTIN for p in SCHEMA if p not in data}
    full_origins.update(origins or {})
    site = Site(name=name, origin=origin, origins=full_origins, **fields)
    _check_whole(site)
    return site


def _partition_fields(pdata: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(pdata)
    if "mem_gb_per_node" in out:
        out["mem_gb_per_node"] = parse_mem_gb(out["mem_gb_per_node"])
    if "max_walltime" in out and not isinstance(out["max_walltime"], str):
        seconds = parse_walltime(out["max_walltime"])
        out["max_walltime"] = Resources(walltime_s=seconds).walltime_hms
    return out


def _check_whole(site: Site) -> None:
    """Checks that need the merged site: the defaults against the partitions, intervals in order, keys that the
    site's scheduler or transport would not use."""
    if site.poll_interval_min_s > site.poll_interval_max_s:
        raise ConfigError(
            f"{site.where('poll_interval_min_s')}: poll_interval_min_s={site.poll_interval_min_s:g} is more than "
            f"poll_interval_max_s={site.poll_interval_max_s:g}"
        )
    marked = [p.name for p in site.partitions.values() if p.default]
    if len(marked) > 1:
        raise ConfigError(
            f"{site.where(f'partitions.{marked[1]}.default')}: partitions {', '.join(repr(m) for m in marked)} are "
            "all marked default = true; mark one"
        )
    if site.transport == "ssh" and not site.ssh.get("host"):
        raise ConfigError(f"{site.where('transport')}: transport = 'ssh' needs [ssh] host = \"login.example.org\"")
    if site.transport != "ssh" and site.ssh:
        first = next(iter(site.ssh))
        raise ConfigError(
            f"{site.where(f'ssh.{first}')}: [ssh] sets {', '.join(site.ssh)}, but transport = {site.transport!r} "
            f"({site.where('transport')}) runs every command on this machine and would not use them; set "
            "transport = \"ssh\" to reach the cluster over SSH, or remove the [ssh] table"
        )
    _check_flavour(site)
    _check_master_ports(site)
    try:
        res = site.default_resources()
    except ResourceError as exc:  # pragma: no cover - each layer's defaults were checked already
        raise ConfigError(f"{site.where('defaults')}: defaults: {exc}") from None
    try:
        site.check_resources(res)
    except ResourceError as exc:
        key = "defaults.partition" if "defaults.partition" in site.origins else "defaults"
        raise ConfigError(f"{site.where(key)}: the defaults do not fit: {exc}") from None


def _check_flavour(site: Site) -> None:
    """A flavour is one of the scheduler's (its adapter's ``flavours``); a scheduler without any takes none."""
    flavours = scheduler_class(site.scheduler).flavours
    if not site.flavour or site.flavour in flavours:
        return
    where = site.where("flavour")
    if flavours:
        raise ConfigError(
            f"{where}: flavour = {site.flavour!r} is not a flavour of scheduler = {site.scheduler!r}; use one of "
            f"{', '.join(repr(f) for f in flavours)}"
        )
    having = [f"{name}: {', '.join(scheduler_class(name).flavours)}" for name in SCHEDULERS
              if scheduler_class(name).flavours]
    raise ConfigError(
        f"{where}: flavour = {site.flavour!r} means nothing to scheduler = {site.scheduler!r} "
        f"({site.where('scheduler')}), which has no flavours (flavours are for {'; '.join(having)}); remove the "
        "flavour line, or set the scheduler it was meant for"
    )


def _check_master_ports(site: Site) -> None:
    """``[distributed] master_port_min/max``: a range of ports, low end first (the defaults fill in a missing end)."""
    dist = site.distributed
    if "master_port_min" not in dist and "master_port_max" not in dist:
        return
    lo = int(dist.get("master_port_min", DEFAULT_PORT_RANGE[0]))
    hi = int(dist.get("master_port_max", DEFAULT_PORT_RANGE[1]))
    if 1024 <= lo <= hi <= 65535:
        return
    key = "master_port_min" if "master_port_min" in dist and lo > hi else "master_port_max"
    shown = [f"{k} = {v}" + ("" if k in dist else " (the default)")
             for k, v in (("master_port_min", lo), ("master_port_max", hi))]
    raise ConfigError(
        f"{site.where(f'distributed.{key}')}: [distributed] {', '.join(shown)}: need 1024 <= master_port_min <= "
        "master_port_max <= 65535; set both ends of the range of ports the launch step may use on a job's first "
        "node, e.g. master_port_min = 29400 and master_port_max = 29999"
    )
