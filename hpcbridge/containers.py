"""Containers (pure): which image a job runs in, and the argv that runs its per-rank program inside it.

Control stays on the host: the batch script, the launch step and the launcher (srun, mpirun, torchrun's per-node
start) run there; only the per-rank program (the worker, or torchrun's agent that starts the workers) runs in the
image, so MPI's process manager and the scheduler's commands stay reachable::

    srun ... apptainer exec --cleanenv --env-file F/container.env [--nv|--rocm] --bind F:F [--pwd W] IMAGE \\
        python3 -u -m hpcbridge.worker F
    srun ... ch-run '--unset-env=!(ALLOWED)' --set-env=PATH=... -b /scratch:/scratch [--cd=W] IMAGE -- \\
        python3 -u -m hpcbridge.worker F
    srun ... --container-image=IMAGE --container-mounts=F:F [--container-workdir=W] python3 -u -m hpcbridge.worker F

(the last is pyxis: srun flags instead of a prefix). The job sees an allow-list of the host's environment
(:func:`allowed`): apptainer and singularity get ``--cleanenv`` and an ``--env-file`` that they evaluate on the host
for each rank, so a rank's own variables (SLURM_PROCID, PMIX_*) pass; charliecloud gets one ``--unset-env`` with
an extended glob that unsets every other name. docs/containers.md has the whole story.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError, ResourceError
from .jobenv import CONTAINER_ENV
from .schedulers import scheduler_class
from .spec import BIND, CONTAINER_RUNTIMES, ENV_PATTERN, Resources
from .store import JobFolder

if TYPE_CHECKING:  # pragma: no cover
    from .sites import Site

#: the PATH a charliecloud job gets (Docker's default, as apptainer's images have): the host's means nothing inside
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: a registry or remote image (apptainer pulls it): docker://, library://, oras://, https:// ...
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: the programs that may run a runtime's images, in the order they are looked for on the cluster
BINARIES: Mapping[str, Tuple[str, ...]] = {
    "apptainer": ("apptainer", "singularity"),
    "singularity": ("singularity", "apptainer"),
    "charliecloud": ("ch-run",),
    "pyxis": (),
}
GPU_VENDORS = ("nvidia", "amd")


@dataclasses.dataclass(frozen=True)
class Bind:
    """One bind mount: host path ``src`` at ``dst`` in the container, ``opts`` ``ro``/``rw`` or empty."""

    src: str
    dst: str
    opts: str = ""

    @classmethod
    def parse(cls, text: str) -> Bind:
        """``SRC[:DST[:OPTS]]`` (:data:`hpcbridge.spec.BIND`); ValueError when it is not one."""
        m = BIND.match(text)
        if not m:
            raise ValueError(f"{text!r} is not SRC[:DST[:ro|rw]] with absolute paths (no ':' ',' or spaces)")
        src, dst, opts = m.groups()
        return cls(posixpath.normpath(src), posixpath.normpath(dst or src), opts or "")

    def text(self) -> str:
        return f"{self.src}:{self.dst}" + (f":{self.opts}" if self.opts else "")


@dataclasses.dataclass(frozen=True)
class Container:
    """What a job's container is: decided by :func:`container_for`, turned into argv by :func:`wrap`."""

    runtime: str
    #: the program: apptainer or singularity (whichever the cluster has), ch-run; None for pyxis (srun's flags)
    binary: Optional[str]
    image: str
    #: the site-config's and the job's bind mounts, in that order
    binds: Tuple[Bind, ...] = ()
    #: host paths the job needs at the same path inside: the job folder, the directory it starts in
    needed: Tuple[str, ...] = ()
    options: Tuple[str, ...] = ()
    #: the host variables the job sees inside: names and prefixes ending in ``*``
    allow: Tuple[str, ...] = ()
    gpus: bool = False
    gpu_vendor: str = "nvidia"
    #: the directory the callable starts in (the job's, when it has one)
    workdir: Optional[str] = None
    python: str = "python3"
    #: apptainer/singularity: the env file of the job (``JobFolder.container_env``)
    env_file: Optional[str] = None

    @property
    def is_uri(self) -> bool:
        return bool(URI.match(self.image))

    def record(self) -> Dict[str, Optional[str]]:
        """What a job's records say about its container (the digest is added by the image check)."""
        return {"runtime": self.runtime, "binary": self.binary, "image": self.image}


def allowed(site: Site, res: Resources) -> Tuple[str, ...]:
    """The host variables a container job of ``site`` sees: :data:`hpcbridge.jobenv.CONTAINER_ENV`, the scheduler's
    own (``SLURM_*``, ``PBS_*``), the names the site exports (``env``, ``[mpi] env``), the site-config's ``[container]
    env`` and the job's ``container_env``."""
    declared = tuple(site.container.get("env", ()))
    for pattern in declared:
        if not ENV_PATTERN.match(pattern):
            raise ConfigError(f"{site.where('container.env')}: container.env: {pattern!r} is not a variable name or "
                              "a prefix such as 'MYAPP_*'")
    names = [*CONTAINER_ENV, *(f"{p}*" for p in scheduler_class(site.scheduler).scrub_prefixes), *site.env,
             *site.mpi.get("env", {}), *declared, *res.container_env]
    prefixes = tuple(p[:-1] for p in names if p.endswith("*"))
    # a name that a prefix already allows is left out (OMPI_MCA_btl under OMPI_*)
    return tuple(dict.fromkeys(n for n in names if n.endswith("*") or not n.startswith(prefixes)))


def container_for(
    site: Site,
    res: Resources,
    *,
    folder: Optional[str] = None,
    workdir: Optional[str] = None,
    binary: Optional[str] = None,
) -> Optional[Container]:
    """The container of a job of ``res`` on ``site`` (None: it runs on the host).

    The image is the job's ``container`` when one was chosen (``container=None`` opts out), else the site-config's
    ``[container] image``; the runtime is ``container_runtime``, else ``[container] runtime``. ``folder`` (the job
    folder) and ``workdir`` (where the job starts) are bound at their own paths; ``binary``: the program the image
    check found (apptainer or singularity). A ResourceError or ConfigError says what to fix, before anything is
    submitted.
    """
    conf = site.container
    image = res.container if res.container_chosen else conf.get("image")
    if image is None:
        return None
    runtime = res.container_runtime or conf.get("runtime")
    if runtime is None:
        raise ResourceError(
            f"container={image!r} needs a runtime: set [container] runtime = \"apptainer\" (or "
            f"{', '.join(repr(r) for r in CONTAINER_RUNTIMES[1:])}) in the site-config of {site.name!r}, or pass "
            "container_runtime=..."
        )
    if runtime not in CONTAINER_RUNTIMES:  # pragma: no cover - the schema and resources_from refuse it first
        raise ResourceError(f"container runtime {runtime!r} is not one of {', '.join(CONTAINER_RUNTIMES)}")
    _check_image(runtime, image)
    binds: List[Bind] = []
    for origin, texts in (("site", conf.get("binds", ())), ("job", res.container_binds)):
        for text in texts:
            try:
                bind = Bind.parse(text)
            except ValueError as exc:
                if origin == "site":
                    raise ConfigError(f"{site.where('container.binds')}: container.binds: {exc}") from None
                raise ResourceError(f"container_binds: {exc}") from None  # pragma: no cover - resources_from
            if runtime == "charliecloud" and bind.opts == "ro":
                raise ResourceError(
                    f"bind {text!r}: charliecloud's ch-run -b has no read-only option; leave out ':ro' (or use "
                    "apptainer, whose binds may be read-only)"
                )
            binds.append(bind)
    needed = tuple(dict.fromkeys(p for p in (folder, workdir) if p))
    return Container(
        runtime=runtime,
        binary=None if runtime == "pyxis" else binary or BINARIES[runtime][0],
        image=image,
        binds=tuple(dict.fromkeys(binds)),
        needed=needed,
        options=tuple(conf.get("options", ())),
        allow=allowed(site, res),
        gpus=res.gpus_per_node > 0,
        gpu_vendor=conf.get("gpu", "nvidia"),
        workdir=workdir,
        python=conf.get("python", "python3"),
        env_file=JobFolder(folder).container_env if folder and runtime in ("apptainer", "singularity") else None,
    )


def _check_image(runtime: str, image: str) -> None:
    if runtime in ("apptainer", "singularity"):
        if not (image.startswith("/") or URI.match(image)):
            raise ResourceError(f"container={image!r}: give the image's absolute path on the cluster (a .sif file or "
                                "a sandbox directory) or a URI such as docker://python:3.11")
    elif runtime == "charliecloud":
        if not image.startswith("/"):
            raise ResourceError(f"container={image!r}: charliecloud runs a directory or SquashFS image: give its "
                                "absolute path on the cluster")
    elif "," in image:
        raise ResourceError(f"container={image!r}: pyxis images cannot hold ','")


# -- binds -------------------------------------------------------------------------------------------------------
def _covered(path: str, binds: Sequence[Bind]) -> bool:
    """Whether ``path`` is already visible at its own path through one of ``binds``."""
    return any(b.src == b.dst and (path == b.src or path.startswith(b.src.rstrip("/") + "/")) for b in binds)


def all_binds(c: Container) -> List[Bind]:
    """Every bind of the job: the site's and the job's, then the paths it needs at their own path. charliecloud
    binds their top-level directory (``/scratch`` for ``/scratch/alice/jobs/1a2b``): its bind targets must exist
    in the read-only image, and images have mount points for the cluster's filesystems, not for every folder."""
    out = list(c.binds)
    for path in c.needed:
        if path == "/":  # the root is never bound (a job that starts in / finds / of the image)
            continue
        if c.runtime == "charliecloud":
            top = "/" + path.strip("/").split("/")[0]
            if top in ("/", "/tmp"):  # ch-run binds the host's /tmp (or $TMPDIR) itself
                continue
            path = top
        if not _covered(path, out):
            out.append(Bind(path, path))
    return out


def bind_sources(c: Container) -> List[str]:
    """The host paths of the site's and the job's binds: the batch script checks they exist on the node (the job
    folder and the directory the job starts in exist by then)."""
    return list(dict.fromkeys(b.src for b in c.binds))


def script_checks(c: Container) -> Dict[str, object]:
    """What the batch script does before it starts the runtime: check the bind ``sources`` on the node, and set
    ``$USER`` when it is missing (``needs_user``: ch-run refuses to start without it)."""
    return {"runtime": c.runtime, "sources": bind_sources(c), "needs_user": c.runtime == "charliecloud"}


def bind_targets(c: Container) -> List[str]:
    """The paths that must exist in the image: charliecloud cannot create a bind target in a read-only image
    (apptainer and enroot create theirs)."""
    if c.runtime != "charliecloud":
        return []
    targets = [b.dst for b in all_binds(c)]
    inside = c.workdir is not None and any(c.workdir == t or c.workdir.startswith(t.rstrip("/") + "/") for t in targets)
    return list(dict.fromkeys(targets + ([c.workdir] if c.workdir and not inside else [])))


# -- argv --------------------------------------------------------------------------------------------------------
def wrap(c: Container, argv: Sequence[str]) -> List[str]:
    """``argv`` run inside the container (pyxis: unchanged, its container comes from :func:`srun_flags`)."""
    if c.runtime == "charliecloud":
        return charliecloud_argv(c, argv)
    if c.runtime in ("apptainer", "singularity"):
        return apptainer_argv(c, argv)
    return list(argv)


def apptainer_argv(c: Container, argv: Sequence[str]) -> List[str]:
    """``apptainer exec`` (or ``singularity exec``: the same flags): ``--cleanenv`` and the job's ``--env-file``
    (the allow-list), ``--nv``/``--rocm`` when GPUs are asked, one ``--bind`` per bind, ``--pwd``, the site's
    options, the image, then ``argv``."""
    out = [c.binary or c.runtime, "exec", "--cleanenv"]
    if c.env_file:
        out += ["--env-file", c.env_file]
    if c.gpus:
        out.append("--rocm" if c.gpu_vendor == "amd" else "--nv")
    for bind in all_binds(c):
        out += ["--bind", bind.text()]
    if c.workdir:
        out += ["--pwd", c.workdir]
    return [*out, *c.options, c.image, *argv]


def unset_glob(allow: Sequence[str]) -> str:
    """charliecloud's ``--unset-env`` pattern that unsets every variable the allow-list does not name: an
    extended glob (fnmatch with FNM_EXTMATCH, ch-run(1))."""
    return "!(" + "|".join(sorted(set(allow))) + ")"


def charliecloud_argv(c: Container, argv: Sequence[str]) -> List[str]:
    """``ch-run``: the allow-list (``--unset-env`` of everything else), the image's PATH, ``-b SRC:DST`` per bind,
    ``--cd``, the site's options (``--set-env`` for an image's own /ch/environment, ``--join`` ...), the image,
    ``--``, then ``argv``."""
    out = [c.binary or "ch-run", f"--unset-env={unset_glob(c.allow)}" if c.allow else "--unset-env=*"]
    if "PATH" not in c.allow:
        out.append(f"--set-env=PATH={DEFAULT_PATH}")
    for bind in all_binds(c):
        out += ["-b", f"{bind.src}:{bind.dst}"]
    if c.workdir:
        out.append(f"--cd={c.workdir}")
    return [*out, *c.options, c.image, "--", *argv]


def srun_flags(c: Optional[Container]) -> List[str]:
    """pyxis: the srun flags that run a step's tasks in the image (none for other runtimes)."""
    if c is None or c.runtime != "pyxis":
        return []
    out = [f"--container-image={c.image}"]
    binds = all_binds(c)
    if binds:
        out.append("--container-mounts=" + ",".join(b.text() for b in binds))
    if c.workdir:
        out.append(f"--container-workdir={c.workdir}")
    return out + list(c.options)


def env_file_text(c: Container) -> str:
    """apptainer/singularity's ``--env-file`` of a job: it is evaluated on the host, for each rank, by the runtime's
    shell interpreter with the host's environment, and exports only the allowed variables (``--cleanenv`` drops
    the rest). Prefixes are listed with ``${!PREFIX@}``, so a rank's own variables (SLURM_PROCID, PMIX_*) pass."""
    prefixes = sorted({p[:-1] for p in c.allow if p.endswith("*")})
    names = sorted({p for p in c.allow if not p.endswith("*")})
    lines = [
        "# hpcbridge: the host variables this job sees in its container (docs/containers.md); apptainer evaluates",
        "# this on the host for each rank, with the host's environment, and --cleanenv drops every other variable",
    ]
    if prefixes:
        lines += [
            "for hpcbridge_name in " + " ".join(f"${{!{p}@}}" for p in prefixes) + "; do",
            '    export "$hpcbridge_name=${!hpcbridge_name}"',
            "done",
            "unset hpcbridge_name",
        ]
    lines += [f'if [ -n "${{{n}+set}}" ]; then export {n}="${{{n}}}"; fi' for n in names]
    return "\n".join(lines) + "\n"


def job_files(site: Site, res: Resources, folder: str) -> Dict[str, bytes]:
    """Files a submission's folder needs for its container: apptainer's and singularity's env file."""
    c = container_for(site, res, folder=folder)
    if c is None or c.env_file is None:
        return {}
    return {c.env_file: env_file_text(c).encode()}


def check_container(c: Container) -> Container:
    """The container the image check runs (on the login node): the image, the runtime's options and an empty
    allow-list, without the job's binds (their sources may exist on the compute nodes only) or GPUs."""
    return dataclasses.replace(c, binds=(), needed=(), allow=(), gpus=False, workdir=None, env_file=None)
