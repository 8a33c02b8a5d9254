"""The cluster-side Python: the same major.minor as this one, with cloudpickle and hpcbridge installed.

Checked once per site and process before the first submission (by running the site's python there); only a pass
is remembered, so a site that was fixed passes on the next try.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, Callable, Dict, List, Set, Tuple

from ._version import __version__
from .errors import RemoteEnvironmentError, TransportError
from .sites import Site
from .transport.base import Completed

#: run by a cluster-side (or an image's) python, with folders as arguments: its version, cloudpickle's and
#: hpcbridge's, which of the folders are missing, and whether it has an /etc/hosts (images)
PROBE = (
    "import json, os, sys\n"
    "def v(name):\n"
    "    try:\n"
    "        return __import__(name).__version__\n"
    "    except Exception:\n"
    "        return None\n"
    "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'executable': sys.executable,\n"
    "                  'cloudpickle': v('cloudpickle'), 'hpcbridge': v('hpcbridge'),\n"
    "                  'missing': [p for p in sys.argv[1:] if not os.path.isdir(p)],\n"
    "                  'hosts': os.path.exists('/etc/hosts')}))\n"
)


def python_matches(info: Dict[str, Any]) -> bool:
    """Whether the probed python has this one's major.minor (no package installed into it can fix that)."""
    return ".".join(str(info["python"]).split(".")[:2]) == f"{sys.version_info[0]}.{sys.version_info[1]}"


def version_problems(info: Dict[str, Any], at: str = "there", inside: str = "there") -> List[str]:
    """What keeps the probed python from running these jobs ("Python 3.10.2 there, 3.11.7 here ..."); ``at`` and
    ``inside`` name where it is ("in the image", "in it")."""
    import cloudpickle

    problems = []
    if not python_matches(info):
        problems.append(f"Python {info['python']} {at}, {sys.version.split()[0]} here (major.minor must match)")
    if info.get("cloudpickle") is None:
        problems.append(f"cloudpickle is not installed {inside}")
    elif str(info["cloudpickle"]).split(".")[0] != cloudpickle.__version__.split(".")[0]:
        problems.append(f"cloudpickle {info['cloudpickle']} {at}, {cloudpickle.__version__} here")
    if info.get("hpcbridge") is None:
        problems.append(f"hpcbridge is not installed {inside}")
    return problems


def wanted_packages() -> str:
    """The pip arguments that give a python this side's hpcbridge and cloudpickle."""
    import cloudpickle

    return f"'hpcbridge=={__version__}' 'cloudpickle=={cloudpickle.__version__}'"


#: cluster-side environments (remote_env_key) that passed Backend.check_remote_env in this process
_ENV_PASSED: Set[Tuple[str, ...]] = set()
_ENV_LOCKS: Dict[Tuple[str, ...], threading.Lock] = {}
_ENV_GUARD = threading.Lock()


def remote_env_key(site: Site) -> Tuple[str, ...]:
    """What identifies a site's cluster-side python: the site, where its commands run, and the python path."""
    target = json.dumps(dict(site.ssh), sort_keys=True, default=str) if site.transport != "local" else ""
    return (site.name, site.transport, target, site.python)


def check(site: Site, run: Callable[..., Completed]) -> None:
    """Once per site and process: the cluster's python must match ours (major.minor) and have cloudpickle and
    hpcbridge. A passed check is remembered for every executor of the same site, target and python; a failed
    one is not, so the next submission checks again (after the site was fixed)."""
    # the very interpreter running this process (not its realpath: a venv's python is a symlink to the
    # system one, with other packages)
    if site.transport == "local" and os.path.abspath(site.python) == sys.executable:
        return
    key = remote_env_key(site)
    with _ENV_GUARD:
        lock = _ENV_LOCKS.setdefault(key, threading.Lock())
    with lock:  # executors of one site starting together run the check once
        if key in _ENV_PASSED:
            return
        _check(site, run)
        _ENV_PASSED.add(key)

def _check(site: Site, run: Callable[..., Completed]) -> None:
    python = site.python
    fix = f"set `python = \"/path/to/python3.{sys.version_info[1]}\"` in the site-config of {site.name!r}"
    try:
        out = run([python, "-c", PROBE], timeout=120)
    except TransportError as exc:
        raise RemoteEnvironmentError(
            f"site {site.name!r}: the cluster-side python {python!r} could not be started ({exc}); {fix}"
        ) from exc
    try:
        info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (ValueError, IndexError):
        info = None
    if info is None:
        raise RemoteEnvironmentError(
            f"site {site.name!r}: the cluster-side python {python!r} did not run "
            f"(exit code {out.returncode}: {out.stderr.strip()[-300:]}); {fix}"
        )
    problems = version_problems(info)
    if problems:
        wanted = wanted_packages()
        if not python_matches(info):  # no package installed into that python can help
            remedy = f"{fix}, a Python {sys.version_info[0]}.{sys.version_info[1]} with {wanted} installed"
        else:
            remedy = f"install matching versions there ({info['executable']} -m pip install {wanted}), or {fix}"
        raise RemoteEnvironmentError(
            f"site {site.name!r}: the cluster-side python {info['executable']} cannot run these jobs: "
            + "; ".join(problems)
            + f". Fix: {remedy}"
        )
