"""A job's container image, checked on the cluster before its first submission, once per image and site.

Through the transport, on the login node: the image exists; the runtime's program is there (apptainer or
singularity, whichever the cluster has: found once per site and kept); the image's python has this python's
major.minor, cloudpickle of the same major version and hpcbridge; a charliecloud image has the directories its
binds mount on. The image's digest (sha256 of a SIF or SquashFS file; of a manifest for a directory) is taken
then too, for the job's records. Only a pass is kept (per site, target, runtime, image, python and bind targets),
so an image that was fixed passes on the next try. ``[container] check = false`` skips it (a runtime installed
on the compute nodes only); pyxis images are never checked here (enroot runs on the compute nodes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from .containers import BINARIES, Container, bind_targets, check_container, wrap
from .errors import ContainerError, TransportError
from .remote_env import PROBE, python_matches, remote_env_key, version_problems, wanted_packages
from .sites import Site
from .transport.base import Completed

Run = Callable[..., Completed]
log = logging.getLogger("hpcbridge")

@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the check found: the records of a job in this image (meta.json, the registry, ``hpcbridge status``)."""

    runtime: str
    binary: Optional[str]
    image: str
    digest: Optional[str] = None
    python: Optional[str] = None

    def record(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_PASSED: Dict[Tuple[Any, ...], ImageInfo] = {}
_BINARIES: Dict[Tuple[Any, ...], str] = {}
_LOCKS: Dict[Tuple[Any, ...], threading.Lock] = {}
_GUARD = threading.Lock()


def _lock(key: Tuple[Any, ...]) -> threading.Lock:
    with _GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def check(site: Site, container: Container, run: Run) -> ImageInfo:
    """Once per image and site: the image can run hpcbridge jobs (else :class:`ContainerError`, saying how to fix
    it); returns its :class:`ImageInfo`, whose ``binary`` is the program that runs it on this cluster."""
    if container.runtime == "pyxis" or not site.container.get("check", True):
        return ImageInfo(container.runtime, container.binary, container.image)
    targets = tuple(bind_targets(container))
    key = (*remote_env_key(site), container.runtime, container.image, container.python, container.options, targets)
    with _lock(key):
        if key in _PASSED:
            return _PASSED[key]
        binary = find_binary(site, container.runtime, run)
        kind = "uri" if container.is_uri else _kind(site, container, run)
        probe = dataclasses.replace(check_container(container), binary=binary)
        info = _probe(site, probe, targets, run)
        digest = None if kind == "uri" else _digest(site, container.image, kind, run)
        found = ImageInfo(container.runtime, binary, container.image, digest, info["python"])
        _PASSED[key] = found
        return found


def find_binary(site: Site, runtime: str, run: Run) -> str:
    """The program that runs ``runtime``'s images on the cluster (apptainer or singularity, whichever is there, the
    named one first), found once per site; :class:`ContainerError` when there is none."""
    key = (*remote_env_key(site), runtime)
    with _lock(key):
        if key in _BINARIES:
            return _BINARIES[key]
        names = BINARIES[runtime]
        for name in names:
            # through env: a missing program is exit code 127 on every transport (no exception locally, no shell)
            try:
                out = run(["env", name, "--version"], timeout=60)
            except TransportError as exc:
                raise ContainerError(f"site {site.name!r}: could not look for the container runtime {name!r} on the "
                                     f"cluster ({exc})") from exc
            if out.returncode != 127:
                _BINARIES[key] = name
                return name
        shown = f"neither {names[0]!r} nor {names[1]!r} is" if len(names) > 1 else f"{names[0]!r} is not"
        raise ContainerError(
            f"site {site.name!r}: the container runtime {runtime!r} is not installed on the cluster: {shown} on the "
            f"login node's PATH. Fix: install it there, set [container] runtime in the site-config of {site.name!r} "
            "to a runtime the cluster has (apptainer, singularity, charliecloud, pyxis), or set [container] check = "
            "false when it exists on the compute nodes only"
        )


def _kind(site: Site, c: Container, run: Run) -> str:
    """``directory`` or ``file``; :class:`ContainerError` when the image is not there."""
    out = _run(site, ["stat", "-L", "--format=%F", c.image], run, "look at the image")
    kind = out.stdout.strip()
    if out.returncode != 0 or not kind:
        raise ContainerError(
            f"site {site.name!r}: the container image {c.image} does not exist on the cluster "
            f"({_last(out.stderr) or 'stat found nothing'}). Fix: build or copy the image there (docs/containers.md, "
            "containers/), or give the path of one that exists (container=..., [container] image)"
        )
    return "directory" if kind == "directory" else "file"


def _probe(site: Site, probe: Container, targets: Tuple[str, ...], run: Run) -> Dict[str, Any]:
    """The image's python, its packages and the missing bind targets; a :class:`ContainerError` for any problem."""
    argv = wrap(probe, [probe.python, "-c", PROBE, *targets])
    out = _run(site, argv, run, "start the image's python")
    try:
        info: Optional[Dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 \
            else None
    except (ValueError, IndexError):
        info = None
    where = f"site {site.name!r}: the container image {probe.image} ({probe.runtime})"
    if info is None:
        raise ContainerError(
            f"{where}: {probe.python!r} did not run in it (exit code {out.returncode}: {_last(out.stderr, 400)}). "
            f"Fix: the image needs a python {sys.version_info[0]}.{sys.version_info[1]} on its PATH (or set "
            "[container] python to its path in the image)"
        )
    problems = version_problems(info, at="in the image", inside="in it")
    if problems:
        wanted = wanted_packages()
        if not python_matches(info):
            remedy = f"build the image with Python {sys.version_info[0]}.{sys.version_info[1]} and {wanted} installed"
        else:
            remedy = f"install them into the image ({info.get('executable') or 'python3'} -m pip install {wanted})"
        raise ContainerError(f"{where} cannot run these jobs: " + "; ".join(problems) +
                             f". Fix: {remedy}; containers/ has recipes (docs/containers.md)")
    missing = info.get("missing") or []
    if missing:
        raise ContainerError(
            f"{where} has no directory for the bind target(s) {', '.join(missing)}, and ch-run cannot create one in "
            "a read-only image. Fix: create them in the image (e.g. mkdir -p IMAGE" + missing[0] + "; containers/"
            "charliecloud.sh makes /home /scratch /work /project /mnt/0-9), or bind to a directory it has (SRC:/mnt/0)"
        )
    if probe.runtime == "charliecloud" and info.get("hosts") is False:
        log.warning("hpcbridge: %s has no /etc/hosts: ch-run binds the host's only over an existing file, so node "
                    "names do not resolve in it (a multi-node job's master address); create an empty one in the "
                    "image", where)
    return info


def _digest(site: Site, image: str, kind: str, run: Run) -> Optional[str]:
    """``sha256:HEX`` of an image file; ``manifest-sha256:HEX`` of a directory: the hash of its sorted listing
    (type, mode, size, modification time, path, link target of every entry), taken with find on the cluster."""
    if kind == "file":
        out = _run(site, ["sha256sum", "--", image], run, "take the image's digest", timeout=900)
        word = out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else ""
        return f"sha256:{word}" if len(word) == 64 else None
    out = _run(site, ["find", image, "-printf", "%y %m %s %T@ %P -> %l\\0"], run, "list the image", timeout=900)
    if out.returncode != 0:
        return None
    entries = sorted(e for e in out.stdout.split("\0") if e)
    return "manifest-sha256:" + hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _run(site: Site, argv: List[str], run: Run, what: str, timeout: float = 180) -> Completed:
    try:
        return run(argv, timeout=timeout)
    except TransportError as exc:
        raise ContainerError(f"site {site.name!r}: could not {what} on the cluster ({exc})") from exc


def _last(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-limit:] if lines else ""
