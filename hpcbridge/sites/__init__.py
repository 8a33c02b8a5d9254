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

Modules, each importing only those above it: ``source`` (TOML text, key -> line), ``schema`` (every key, and
validation), ``limits`` (partitions and their limits), ``model`` (``Site``, built from merged data), ``layers``
(one layer per source, and the merge), ``loading`` (finding the layers on this machine: the only one that reads
files or the environment).
"""

from __future__ import annotations

from .layers import KEYWORD, Layer, merge_layers
from .limits import Partition
from .loading import (
    ENTRY_POINT_GROUP,
    ENV_PATH,
    ENV_SITE,
    PROJECT_FILE,
    SYSTEM_DIR,
    default_site,
    default_site_origin,
    find_project_file,
    known_sites,
    load_site,
    load_site_file,
    misnamed_site_files,
    package_dirs,
    read_project,
    search_dirs,
    site_layers,
    site_names,
    system_dirs,
    user_dir,
)
from .model import BUILTIN, Site, builtin_local, site_from_mapping

__all__ = [
    "BUILTIN", "ENTRY_POINT_GROUP", "ENV_PATH", "ENV_SITE", "KEYWORD", "Layer", "PROJECT_FILE", "Partition",
    "SYSTEM_DIR", "Site", "builtin_local", "default_site", "default_site_origin", "find_project_file",
    "known_sites", "load_site", "load_site_file", "merge_layers", "misnamed_site_files", "package_dirs",
    "read_project", "search_dirs",
    "site_from_mapping", "site_layers", "site_names", "system_dirs", "user_dir",
]
