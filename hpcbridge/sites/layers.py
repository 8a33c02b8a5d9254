"""Layers of a site and their merge: later wins key by key, and each key remembers its layer (pure: text in).

Each layer is validated on its own, so an error names its file and line; the merged site is checked as a whole
by :func:`~hpcbridge.sites.model.site_from_mapping`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .model import LOCAL_DATA, Site, site_from_mapping
from .schema import check_project, dotted, validate
from .source import Source, parse_toml

#: the origin of a key given to ``load_site`` as a keyword
KEYWORD = "keyword argument"


@dataclasses.dataclass(frozen=True)
class Layer:
    """One source of settings for a site: its kind, a label for humans, its data and where it was read."""

    kind: str  # built-in | system | package | user | project | keyword | file
    label: str
    data: Mapping[str, Any]
    source: Optional[Source] = None

    def where(self, keypath: Tuple[str, ...]) -> str:
        return self.source.where(keypath) if self.source is not None else self.label


def builtin_layer() -> Layer:
    """The built-in layer of the ``local`` site."""
    return Layer("built-in", "built-in", dict(LOCAL_DATA))


def file_layer(kind: str, path: str, text: str, label: str = "") -> Layer:
    """A whole site-config file's text as a validated layer."""
    data = parse_toml(text, path)
    source = Source(path, text, label=label)
    validate(data, source)
    return Layer(kind, f"{path} ({label})" if label else path, data, source)


def parse_project(path: str, text: str) -> Dict[str, Any]:
    """A project file's text, checked: ``default_site`` and ``[sites.NAME]`` tables only."""
    data = parse_toml(text, path)
    check_project(data, Source(path, text))
    return data


def project_layer(name: str, path: str, text: str, data: Mapping[str, Any]) -> Optional[Layer]:
    """The validated ``[sites.NAME]`` table of a parsed project file, or None when it has none."""
    table = data.get("sites", {}).get(name)
    if table is None:
        return None
    source = Source(path, text, prefix=("sites", name))
    validate(table, source)
    return Layer("project", path, table, source)


def keyword_layer(overrides: Mapping[str, Any]) -> Layer:
    """``load_site`` keyword arguments as the top layer, validated."""
    validate(overrides, Source(KEYWORD, ""))
    return Layer("keyword", KEYWORD, dict(overrides))


def merge_layers(name: str, layers: List[Layer]) -> Site:
    """Merge validated layers (later wins) into a :class:`Site`, recording where each key came from."""
    merged: Dict[str, Any] = {}
    origins: Dict[str, str] = {}
    for layer in layers:
        _merge(merged, origins, layer.data, (), layer)
    files = tuple(layer.label for layer in layers if layer.kind not in ("keyword",))
    return site_from_mapping(name, merged, origin=files, origins=origins)


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
