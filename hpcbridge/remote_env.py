"""The cluster-side Python: the same major.minor as this one, with cloudpickle and hpcbridge installed.

Checked once per site and process before the first submission (by running the site's python there); only a pass
is remembered, so a site that was fixed passes on the next try.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Callable, Dict, Set, Tuple

from ._version import __version__
from .errors import RemoteEnvironmentError, TransportError
from .sites import Site
from .transport.base import Completed

_CHECK = (
    "import json, sys\n"
    "def v(name):\n"
    "    try:\n"
    "        return __import__(name).__version__\n"
    "    except Exception:\n"
    "        return None\n"
    "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'executable': sys.executable,\n"
    "                  'cloudpickle': v('cloudpickle'), 'hpcbridge': v('hpcbridge')}))\n"
)


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
    import cloudpickle

    python = site.python
    fix = f"set `python = \"/path/to/python3.{sys.version_info[1]}\"` in the site-config of {site.name!r}"
    try:
        out = run([python, "-c", _CHECK], timeout=120)
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
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    theirs = ".".join(info["python"].split(".")[:2])
    problems = []
    if theirs != ours:
        problems.append(f"Python {info['python']} there, {sys.version.split()[0]} here (major.minor must match)")
    if info["cloudpickle"] is None:
        problems.append("cloudpickle is not installed there")
    elif info["cloudpickle"].split(".")[0] != cloudpickle.__version__.split(".")[0]:
        problems.append(f"cloudpickle {info['cloudpickle']} there, {cloudpickle.__version__} here")
    if info["hpcbridge"] is None:
        problems.append("hpcbridge is not installed there")
    if problems:
        wanted = f"'hpcbridge=={__version__}' 'cloudpickle=={cloudpickle.__version__}'"
        if theirs != ours:  # no package installed into that python can help
            remedy = f"{fix}, a Python {ours} with {wanted} installed"
        else:
            remedy = f"install matching versions there ({info['executable']} -m pip install {wanted}), or {fix}"
        raise RemoteEnvironmentError(
            f"site {site.name!r}: the cluster-side python {info['executable']} cannot run these jobs: "
            + "; ".join(problems)
            + f". Fix: {remedy}"
        )
