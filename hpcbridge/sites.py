"""Site-configs: what a cluster is and how to reach it (TOML files; see docs/site-configs.md).

Layers, later wins key by key (tables merge, lists and values are replaced):

1. built-in: the ``local`` site, and every key's default
2. system: ``/etc/hpcbridge/sites/NAME.toml``, then each directory of ``$HPCBRIDGE_SITES_PATH``
3. packages: installed distributions with an entry point in the group ``hpcbridge.sites``
4. user: ``$XDG_CONFIG_HOME/hpcbridge/sites/NAME.toml`` (default ``~/.config/hpcbridge/sites``)
5. project: the table ``[sites.NAME]`` of the nearest ``hpcbridge.toml`` in the current directory or its parents
6. keyword arguments: ``load_site(NAME, key=value)``; resources given to ``Executor`` override ``defaults``

Every layer is validated on its own (so an error names its file and line), then the merged site is checked as a
whole (defaults against partition limits). ``Site.origins`` says which layer set each key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from .errors import ConfigError, ResourceError, UnknownSiteError
from .siteschema import PROJECT_KEYS, SCHEMA, Source, check_value, dotted, validate
from .spec import Resources, did_you_mean, parse_mem_gb, parse_walltime, resources_from

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SYSTEM_DIR = "/etc/hpcbridge/sites"
ENV_PATH = "HPCBRIDGE_SITES_PATH"
ENV_SITE = "HPCBRIDGE_SITE"
ENTRY_POINT_GROUP = "hpcbridge.sites"
PROJECT_FILE = "hpcbridge.toml"
BUILTIN = "built-in default"
KEYWORD = "keyword argument"
_SITE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclasses.dataclass(frozen=True)
class Partition:
    """Limits of one partition (queue); None means not limited by the site-config."""

    name: str
    max_nodes: Optional[int] = None
    cpus_per_node: Optional[int] = None
    mem_gb_per_node: Optional[float] = None
    gpus_per_node: Optional[int] = None
    gpu_type: str = ""
    max_walltime: Optional[str] = None
    default: bool = False
    description: str = ""

    @property
    def max_walltime_s(self) -> Optional[int]:
        return None if self.max_walltime is None else parse_walltime(self.max_walltime)


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
    description: str = ""
    #: the files (layers) that define this site, lowest precedence first
    origin: Tuple[str, ...] = ()
    #: dotted key -> where its value came from (``file:line``, ``built-in default``, ``keyword argument``)
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def default_resources(self) -> Resources:
        return resources_from(Resources(), dict(self.defaults))

    def default_partition(self) -> Optional[str]:
        """The partition a job that names none lands in, when the site-config says."""
        marked = [p.name for p in self.partitions.values() if p.default]
        return marked[0] if marked else None

    def check_resources(self, res: Resources) -> None:
        """Raise :class:`ResourceError` when ``res`` exceeds its partition's limits, naming partitions that fit."""
        check_partition_limits(self, res)

    def where(self, key: str) -> str:
        """Where ``key`` (dotted) was set; for messages."""
        return self.origins.get(key) or (self.origin[-1] if self.origin else f"site {self.name!r}")


#: Top-level keys a site-config may hold.
SITE_KEYS = tuple(SCHEMA)
PARTITION_KEYS = tuple(f.name for f in dataclasses.fields(Partition) if f.name != "name")


# -- layers -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layer:
    """One source of settings for a site: its kind, a label for humans, its data and where it was read."""

    kind: str  # built-in | system | package | user | project | keyword
    label: str
    data: Mapping[str, Any]
    source: Optional[Source] = None

    def where(self, keypath: Tuple[str, ...]) -> str:
        return self.source.where(keypath) if self.source is not None else self.label


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


_LOCAL_DATA = {
    "scheduler": "local",
    "python": sys.executable,
    "workdir": "~/.hpcbridge/local",
    "poll_interval_min_s": 0.1,
    "poll_interval_max_s": 2.0,
    "description": "this machine, no scheduler",
}


def user_dir() -> str:
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(xdg, "hpcbridge", "sites")


def system_dirs() -> List[str]:
    return [SYSTEM_DIR] + [d for d in os.environ.get(ENV_PATH, "").split(os.pathsep) if d]


def search_dirs() -> List[str]:
    """Directories searched for ``NAME.toml`` (system, then user), lowest precedence first."""
    return system_dirs() + [user_dir()]


def package_dirs() -> List[Tuple[str, str]]:
    """``(label, directory)`` for every installed package with a ``hpcbridge.sites`` entry point.

    The entry point names a package (its folder's ``*.toml`` files are site-configs) or a callable returning a
    folder path. Packages are taken in entry-point name order.
    """
    from importlib import metadata

    try:
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:  # pragma: no cover - Python 3.9
        eps = list(metadata.entry_points().get(ENTRY_POINT_GROUP, []))  # type: ignore[attr-defined,unused-ignore]
    out: List[Tuple[str, str]] = []
    seen = set()
    for ep in sorted(eps, key=lambda e: (e.name, e.value)):
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        dist = getattr(ep, "dist", None)
        label = f"package {dist.name} {dist.version}" if dist is not None else f"entry point {ep.name}"
        try:
            obj = ep.load()
            target: Any = obj() if callable(obj) else obj
            if hasattr(target, "__path__"):
                folder = list(target.__path__)[0]
            elif hasattr(target, "__file__") and target.__file__:
                folder = os.path.dirname(target.__file__)
            else:
                folder = os.fspath(target)
        except Exception as exc:
            raise ConfigError(
                f"{label}: its {ENTRY_POINT_GROUP} entry point {ep.name} = {ep.value!r} could not be loaded "
                f"({type(exc).__name__}: {exc}); fix or uninstall that package"
            ) from exc
        out.append((label, folder))
    return out


def find_project_file(start: Optional[str] = None) -> Optional[str]:
    """The nearest ``hpcbridge.toml`` in ``start`` (default: the current directory) or its parents."""
    here = os.path.abspath(start or os.getcwd())
    while True:
        path = os.path.join(here, PROJECT_FILE)
        if os.path.isfile(path):
            return path
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def read_toml(path: str) -> Tuple[Dict[str, Any], str]:
    """Parsed TOML and its text; a syntax error names the file, line and column."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    text = raw.decode("utf-8", "replace")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        where = f"{path}:{m.group(1)}:{m.group(2)}" if m else path
        msg = msg[: m.start()] if m else msg
        raise ConfigError(f"{where}: not valid TOML: {msg}") from None


def read_project(path: str) -> Tuple[Dict[str, Any], str]:
    """A project file, checked: ``default_site`` and ``[sites.NAME]`` tables only."""
    data, text = read_toml(path)
    src = Source(path, text)
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
    return data, text


def _file_layer(kind: str, path: str, label: str = "") -> Layer:
    data, text = read_toml(path)
    source = Source(path, text, label=label)
    validate(data, source)
    return Layer(kind, f"{path} ({label})" if label else path, data, source)


def site_layers(name: str, overrides: Optional[Mapping[str, Any]] = None) -> List[Layer]:
    """Every layer that defines ``name``, lowest precedence first (the built-in layer only for ``local``)."""
    layers: List[Layer] = []
    if name == "local":
        layers.append(Layer("built-in", "built-in", dict(_LOCAL_DATA)))
    for d in system_dirs():
        path = os.path.join(d, f"{name}.toml")
        if os.path.isfile(path):
            layers.append(_file_layer("system", path))
    for label, folder in package_dirs():
        path = os.path.join(folder, f"{name}.toml")
        if os.path.isfile(path):
            layers.append(_file_layer("package", path, label))
    path = os.path.join(user_dir(), f"{name}.toml")
    if os.path.isfile(path):
        layers.append(_file_layer("user", path))
    project = find_project_file()
    if project is not None:
        pdata, text = read_project(project)
        table = pdata.get("sites", {}).get(name)
        if table is not None:
            source = Source(project, text, prefix=("sites", name))
            validate(table, source)
            layers.append(Layer("project", project, table, source))
    if overrides:
        validate(overrides, Source(KEYWORD, ""))
        layers.append(Layer("keyword", KEYWORD, dict(overrides)))
    return layers


def site_names() -> Dict[str, List[str]]:
    """Every site name that some layer defines -> the kinds of layer that define it."""
    found: Dict[str, List[str]] = {"local": ["built-in"]}

    def scan(folder: str, kind: str) -> None:
        try:
            names = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".toml"))
        except OSError:
            return
        for n in names:
            if _SITE_NAME.match(n):
                found.setdefault(n, []).append(kind)

    for d in system_dirs():
        scan(d, "system")
    for _, folder in package_dirs():
        scan(folder, "package")
    scan(user_dir(), "user")
    project = find_project_file()
    if project is not None:
        for n in read_project(project)[0].get("sites", {}):
            found.setdefault(n, []).append("project")
    return dict(sorted(found.items()))


def known_sites() -> List[str]:
    return list(site_names())


def default_site() -> str:
    """The site the CLI uses without ``--site``: ``$HPCBRIDGE_SITE``, the project file's ``default_site``, ``local``."""
    env = os.environ.get(ENV_SITE)
    if env:
        return env
    project = find_project_file()
    if project is not None:
        value = read_project(project)[0].get("default_site")
        if isinstance(value, str) and value:
            return value
    return "local"


def load_site(name: str, **overrides: Any) -> Site:
    """The site called ``name``, merged over every layer that defines it, validated.

    ``overrides`` are the top layer: any site-config key, e.g. ``load_site("hpc", python="/opt/py/bin/python")``.
    """
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        raise UnknownSiteError(f"site name {name!r} may hold letters, digits and . _ - only")
    layers = site_layers(name, overrides)
    if not any(layer.kind != "keyword" for layer in layers):
        known = known_sites()
        raise UnknownSiteError(
            f"unknown site {name!r}{did_you_mean(name, known)}; known sites: {', '.join(known)}. "
            f"Add {name}.toml to one of: {', '.join(search_dirs())}, or a [sites.{name}] table to {PROJECT_FILE}"
        )
    return merge_layers(name, layers)


def load_site_file(path: str, name: Optional[str] = None) -> Site:
    """One TOML file as a whole site (``hpcbridge sites check FILE``); the name defaults to the file's stem."""
    layer = _file_layer("file", path)
    stem = os.path.splitext(os.path.basename(path))[0]
    return merge_layers(name or stem, [layer])


def merge_layers(name: str, layers: List[Layer]) -> Site:
    """Merge validated layers (later wins) into a :class:`Site`, recording where each key came from."""
    merged: Dict[str, Any] = {}
    origins: Dict[str, str] = {}
    for layer in layers:
        _merge(merged, origins, layer.data, (), layer)
    files = tuple(layer.label for layer in layers if layer.kind not in ("keyword",))
    site = site_from_mapping(name, merged, origin=files, origins=origins)
    return site


def _merge(into: Dict[str, Any], origins: Dict[str, str], data: Mapping[str, Any], path: Tuple[str, ...],
           layer: Layer) -> None:
    for key, value in data.items():
        here = path + (key,)
        if isinstance(value, Mapping):
            sub = into.get(key)
            if not isinstance(sub, dict):
                sub = into[key] = {}
            if not value:
                origins.setdefault(dotted(here), layer.where(here))
            _merge(sub, origins, value, here, layer)
        else:
            into[key] = list(value) if isinstance(value, list) else value
            origins[dotted(here)] = layer.where(here)


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
    """Checks that need the merged site: the defaults against the partitions, intervals in order."""
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
    try:
        res = site.default_resources()
    except ResourceError as exc:  # pragma: no cover - each layer's defaults were checked already
        raise ConfigError(f"{site.where('defaults')}: defaults: {exc}") from None
    try:
        check_partition_limits(site, res)
    except ResourceError as exc:
        key = "defaults.partition" if "defaults.partition" in site.origins else "defaults"
        raise ConfigError(f"{site.where(key)}: the defaults do not fit: {exc}") from None


# -- partition limits -------------------------------------------------------------------------------------------
def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _limits(res: Resources) -> Iterator[Tuple[str, str, float, str, Any]]:
    """``(label, value text, value, partition attribute, format)`` for each limited quantity of a request."""
    yield f"nodes={res.nodes}", str(res.nodes), res.nodes, "max_nodes", str
    cpus = res.tasks_per_node * res.cpus_per_task
    label = (
        f"cpus_per_task={res.cpus_per_task}"
        if res.tasks_per_node == 1
        else f"tasks_per_node x cpus_per_task = {res.tasks_per_node} x {res.cpus_per_task} = {cpus} CPUs per node"
    )
    yield label, f"{cpus} CPUs per node", cpus, "cpus_per_node", lambda v: f"{v} CPUs per node"
    if res.mem_gb is not None:
        yield f"mem_gb={_fmt_num(res.mem_gb)}", f"{_fmt_num(res.mem_gb)} GB", res.mem_gb, "mem_gb_per_node", (
            lambda v: f"{_fmt_num(v)} GB per node"
        )
    if res.gpus_per_node:
        yield f"gpus_per_node={res.gpus_per_node}", str(res.gpus_per_node), res.gpus_per_node, "gpus_per_node", str
    if res.walltime_s is not None:
        hms = res.walltime_hms or ""
        yield f"walltime={hms}", hms, res.walltime_s, "max_walltime_s", (
            lambda v: Resources(walltime_s=v).walltime_hms
        )


def check_partition_limits(site: Site, res: Resources) -> None:
    """The request must fit its partition (the named one, else the site's default partition)."""
    if not site.partitions:
        return
    name = res.partition or site.default_partition()
    if name is None:
        return
    part = site.partitions.get(name)
    if part is None:
        names = sorted(site.partitions)
        raise ResourceError(
            f"partition={name!r} is not a partition of site {site.name!r}{did_you_mean(name, names)}; "
            f"partitions: {', '.join(names)}"
        )
    for label, value_text, value, attr, fmt in _limits(res):
        limit = getattr(part, attr)
        if limit is None or value <= limit:
            continue
        fit = [p.name for p in site.partitions.values() if p.name != name and _allows(p, attr, value)]
        if fit:
            tail = f"partitions with {value_text}: {', '.join(repr(f) for f in sorted(fit))}"
        else:
            most = max(getattr(p, attr) for p in site.partitions.values())
            tail = f"no partition of site {site.name!r} allows more than {fmt(most)}"
        raise ResourceError(f"{label} exceeds partition {name!r} (max {fmt(limit)}); {tail}")


def _allows(part: Partition, attr: str, value: float) -> bool:
    limit = getattr(part, attr)
    return limit is None or value <= limit


def validate_value(key: str, value: Any) -> None:
    """Check one top-level key's value (for ``load_site`` keyword overrides and the CLI)."""
    spec = SCHEMA.get(key)
    if spec is None:
        raise ConfigError(f"unknown site-config key {key!r}{did_you_mean(key, SCHEMA)}")
    check_value(value, spec, (key,), None)
