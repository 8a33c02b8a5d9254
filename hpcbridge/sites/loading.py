"""Finding a site's layers on this machine: /etc, ``$HPCBRIDGE_SITES_PATH``, packages, XDG, the project file.

The only module of the site-configs that reads files or the environment (client-side state); it hands text to the
pure parsing, validation and merging of ``layers.py``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import ConfigError, UnknownSiteError
from ..spec import did_you_mean
from .layers import Layer, builtin_layer, file_layer, keyword_layer, merge_layers, parse_project, project_layer
from .model import Site
from .schema import SITE_NAME, site_name_problem

SYSTEM_DIR = "/etc/hpcbridge/sites"
ENV_PATH = "HPCBRIDGE_SITES_PATH"
ENV_SITE = "HPCBRIDGE_SITE"
ENTRY_POINT_GROUP = "hpcbridge.sites"
PROJECT_FILE = "hpcbridge.toml"


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
    folder path. Packages are taken in entry-point name order. One that cannot be loaded, or names no folder, is a
    :class:`ConfigError` naming the package (a broken install is not skipped: its sites would vanish unseen).
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
        remedy = (
            f"reinstall a working version of it, or uninstall it (pip uninstall {dist.name})" if dist is not None
            else "reinstall or uninstall the package that provides it"
        )
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
                f"({type(exc).__name__}: {exc}); {remedy}"
            ) from exc
        if not os.path.isdir(folder):
            raise ConfigError(
                f"{label}: its {ENTRY_POINT_GROUP} entry point {ep.name} = {ep.value!r} names {folder!r}, which is "
                f"not a folder of site-configs; {remedy}"
            )
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


def read_text(path: str) -> str:
    """A site-config file's text (undecodable bytes replaced); an unreadable file is a :class:`ConfigError`."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return raw.decode("utf-8", "replace")


def read_project(path: str) -> Tuple[Dict[str, Any], str]:
    """A project file, checked, and its text: ``default_site`` and ``[sites.NAME]`` tables only."""
    text = read_text(path)
    return parse_project(path, text), text


def site_layers(name: str, overrides: Optional[Mapping[str, Any]] = None) -> List[Layer]:
    """Every layer that defines ``name``, lowest precedence first (the built-in layer only for ``local``)."""
    layers: List[Layer] = []
    if name == "local":
        layers.append(builtin_layer())
    for d in system_dirs():
        path = os.path.join(d, f"{name}.toml")
        if os.path.isfile(path):
            layers.append(file_layer("system", path, read_text(path)))
    for label, folder in package_dirs():
        path = os.path.join(folder, f"{name}.toml")
        if os.path.isfile(path):
            layers.append(file_layer("package", path, read_text(path), label))
    path = os.path.join(user_dir(), f"{name}.toml")
    if os.path.isfile(path):
        layers.append(file_layer("user", path, read_text(path)))
    project = find_project_file()
    if project is not None:
        pdata, text = read_project(project)
        layer = project_layer(name, project, text, pdata)
        if layer is not None:
            layers.append(layer)
    if overrides:
        layers.append(keyword_layer(overrides))
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
            if SITE_NAME.match(n):
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


def misnamed_site_files() -> List[str]:
    """Why each ``*.toml`` file in the site folders (system, packages, user) cannot be a site: its name is not a
    site name, so no ``--site`` reaches it (``hpcbridge sites check`` reports these)."""
    folders = [*system_dirs(), *(folder for _, folder in package_dirs()), user_dir()]
    out: List[str] = []
    for folder in folders:
        try:
            files = sorted(f for f in os.listdir(folder) if f.endswith(".toml"))
        except OSError:
            continue
        for f in files:
            problem = site_name_problem(f[:-5])
            if problem:
                out.append(f"{os.path.join(folder, f)}: {problem}; rename the file")
    return out


def known_sites() -> List[str]:
    return list(site_names())


def default_site() -> str:
    """The site the CLI uses without ``--site``: ``$HPCBRIDGE_SITE``, the project file's ``default_site``, ``local``."""
    return default_site_origin()[0]


def default_site_origin() -> Tuple[str, str]:
    """:func:`default_site` and where it came from: ``$HPCBRIDGE_SITE``, ``default_site in PATH``, or ``the
    built-in default``."""
    env = os.environ.get(ENV_SITE)
    if env:
        return env, f"${ENV_SITE}"
    project = find_project_file()
    if project is not None:
        value = read_project(project)[0].get("default_site")
        if isinstance(value, str) and value:
            return value, f"default_site in {project}"
    return "local", "the built-in default"


def load_site(name: str, **overrides: Any) -> Site:
    """The site called ``name``, merged over every layer that defines it, validated.

    ``overrides`` are the top layer: any site-config key, e.g. ``load_site("hpc", python="/opt/py/bin/python")``.
    """
    problem = site_name_problem(name)
    if problem:
        raise UnknownSiteError(problem)
    layers = site_layers(name, overrides)
    if not any(layer.kind != "keyword" for layer in layers):
        known = known_sites()
        raise UnknownSiteError(
            f"unknown site {name!r}{did_you_mean(name, known)}; known sites: {', '.join(known)}. "
            f"Add {name}.toml to one of: {', '.join(search_dirs())}, or a [sites.{name}] table to {PROJECT_FILE}"
        )
    return merge_layers(name, layers)


def load_site_file(path: str, name: Optional[str] = None) -> Site:
    """One TOML file as a whole site (``hpcbridge sites check FILE``); the name defaults to the file's stem, which
    must then be a site name (the file is installed as NAME.toml)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    problem = site_name_problem(name or stem)
    if problem:
        raise ConfigError(f"{path}: {problem}" + ("" if name else "; rename the file"))
    layer = file_layer("file", path, read_text(path))
    return merge_layers(name or stem, [layer])
