"""Site-configs: what a cluster is and how to reach it (TOML files; see docs/site-configs.md).

Search order, later wins for a site of the same name: the built-in ``local`` site, ``/etc/hpcbridge/sites``,
each directory in ``$HPCBRIDGE_SITES_PATH``, the user's
``~/.config/hpcbridge/sites``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import ConfigError, UnknownSiteError
from .spec import RESOURCE_NAMES, Resources, did_you_mean, resources_from

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SYSTEM_DIR = "/etc/hpcbridge/sites"
ENV_PATH = "HPCBRIDGE_SITES_PATH"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Partition:
    """Limits of one partition (queue); None means not limited by the site-config."""

    name: str
    max_nodes: Optional[int] = None
    cpus_per_node: Optional[int] = None
    mem_gb_per_node: Optional[float] = None
    gpus_per_node: Optional[int] = None
    max_walltime: Optional[str] = None


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
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    partitions: Mapping[str, Partition] = dataclasses.field(default_factory=dict)
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    modules: Tuple[str, ...] = ()
    setup: Tuple[str, ...] = ()
    templates: Tuple[str, ...] = ()
    slurm: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    local_parallel: int = 0
    description: str = ""
    origin: Tuple[str, ...] = ()

    def default_resources(self) -> Resources:
        return resources_from(Resources(), dict(self.defaults))


#: Top-level keys a site-config may hold.
SITE_KEYS = tuple(f.name for f in dataclasses.fields(Site) if f.name not in ("name", "origin"))
PARTITION_KEYS = tuple(f.name for f in dataclasses.fields(Partition) if f.name != "name")


def builtin_local() -> Site:
    """The built-in ``local`` site: jobs run as processes on this machine, no scheduler needed."""
    return Site(
        name="local",
        scheduler="local",
        python=sys.executable,
        workdir="~/.hpcbridge/local",
        poll_interval_min_s=0.1,
        poll_interval_max_s=2.0,
        description="this machine, no scheduler",
        origin=("built-in",),
    )


def search_dirs() -> List[str]:
    """Directories searched for ``NAME.toml``, lowest precedence first."""
    dirs = [SYSTEM_DIR]
    dirs += [d for d in os.environ.get(ENV_PATH, "").split(os.pathsep) if d]
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    dirs.append(os.path.join(xdg, "hpcbridge", "sites"))
    return dirs


def known_sites() -> List[str]:
    names = {"local"}
    for d in search_dirs():
        try:
            names.update(f[:-5] for f in os.listdir(d) if f.endswith(".toml"))
        except OSError:
            pass
    return sorted(names)


def load_site(name: str) -> Site:
    """The site called ``name``, merged over every layer that defines it, validated."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise UnknownSiteError(f"site name {name!r} may hold letters, digits and . _ - only")
    merged: Dict[str, Any] = {}
    origin: List[str] = []
    for d in search_dirs():
        path = os.path.join(d, f"{name}.toml")
        if os.path.isfile(path):
            _deep_merge(merged, read_toml(path))
            origin.append(path)
    if not origin:
        if name == "local":
            return builtin_local()
        known = known_sites()
        raise UnknownSiteError(
            f"unknown site {name!r}{did_you_mean(name, known)}; known sites: {', '.join(known)}. "
            f"Add {name}.toml to one of: {', '.join(search_dirs())}"
        )
    base = dataclasses.asdict(builtin_local()) if name == "local" else {}
    base.pop("origin", None)
    base.pop("name", None)
    _deep_merge(base, merged)
    return site_from_mapping(name, base, origin=tuple(origin))


def read_toml(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


def site_from_mapping(name: str, data: Mapping[str, Any], origin: Tuple[str, ...] = ()) -> Site:
    """Build and validate a :class:`Site` from parsed TOML."""
    where = origin[-1] if origin else f"site {name!r}"
    for key in data:
        if key not in SITE_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, SITE_KEYS)}")
    fields: Dict[str, Any] = dict(data)
    parts = {}
    for pname, pdata in dict(data.get("partitions", {})).items():
        for key in pdata:
            if key not in PARTITION_KEYS:
                raise ConfigError(
                    f"{where}: partitions.{pname}: unknown key {key!r}{did_you_mean(key, PARTITION_KEYS)}"
                )
        parts[pname] = Partition(name=pname, **pdata)
    fields["partitions"] = parts
    for key in ("modules", "setup", "templates"):
        if key in fields:
            fields[key] = tuple(fields[key])
    for key in fields.get("env", {}):
        if not _ENV_NAME.match(key):
            raise ConfigError(f"{where}: env: {key!r} is not a valid environment variable name")
    fields["env"] = {k: str(v) for k, v in fields.get("env", {}).items()}
    if fields.get("scheduler", "slurm") not in ("slurm", "local", "pbs"):
        raise ConfigError(f"{where}: scheduler must be 'slurm', 'pbs' or 'local'")
    if fields.get("transport", "local") not in ("local", "ssh"):
        raise ConfigError(f"{where}: transport must be 'local' or 'ssh'")
    defaults = dict(fields.get("defaults", {}))
    for key in defaults:
        if key not in RESOURCE_NAMES:
            raise ConfigError(f"{where}: defaults: unknown resource {key!r}{did_you_mean(key, RESOURCE_NAMES)}")
    site = Site(name=name, origin=origin, **fields)
    try:
        site.default_resources()
    except Exception as exc:
        raise ConfigError(f"{where}: defaults: {exc}") from exc
    return site


def _deep_merge(into: Dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
