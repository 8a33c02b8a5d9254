"""Resource requests: parsing, validation and normalisation (pure)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import ResourceError

LAUNCHERS = ("srun", "mpirun", "torchrun")
#: container runtimes (docs/containers.md): pyxis is Slurm's SPANK plugin (srun --container-image), not a prefix
CONTAINER_RUNTIMES = ("apptainer", "singularity", "charliecloud", "pyxis")
#: a bind mount: SRC[:DST[:OPTS]], absolute paths without ':' ',' or spaces; OPTS ro or rw
BIND = re.compile(r"^(/[^:,\s]*)(?::(/[^:,\s]*)(?::(ro|rw))?)?$")
#: a variable name the container may see, or a prefix of names: WANDB_API_KEY, WANDB_*
ENV_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.+\-]+$")
_NAME = re.compile(r"^[A-Za-z0-9_.+\-]{1,100}$")
#: a scheduler's job id as ``after=`` takes it: Slurm ``123``/``123_4``, PBS ``123.srv``/``123[].srv``
JOB_ID = re.compile(r"^[0-9][A-Za-z0-9_.\[\]\-]{0,200}$")


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one job asks of the scheduler.

    ``walltime_s`` and ``mem_gb`` are normalised; pass ``walltime`` (minutes or ``"HH:MM:SS"``) and ``mem_gb``
    (a number, or a string with a unit such as ``"512MB"``) to :func:`resources_from`.
    """

    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: Optional[float] = None
    walltime_s: Optional[int] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    name: Optional[str] = None
    extra_directives: Tuple[str, ...] = ()
    launcher: Optional[str] = None
    array_parallelism: Optional[int] = None
    #: job ids this job waits for: it starts only after every one of them completed successfully (``after=``)
    after: Tuple[str, ...] = ()
    #: whether ``launcher`` was chosen (by the user or the site-config's ``[defaults]``): ``launcher=None`` then
    #: means "run once", while an unchosen one lets the site decide (PBS: mpirun for several tasks; launchers.py)
    launcher_chosen: bool = dataclasses.field(default=False, repr=False)
    #: the image the job runs in (docs/containers.md): a path on the cluster (SIF, SquashFS, directory) or a URI
    container: Optional[str] = None
    #: bind mounts besides the site-config's, ``SRC[:DST[:OPTS]]``
    container_binds: Tuple[str, ...] = ()
    #: the runtime, instead of the site-config's ``[container] runtime``
    container_runtime: Optional[str] = None
    #: variables (or ``PREFIX*``) the job may see inside the container besides hpcbridge's allow-list
    container_env: Tuple[str, ...] = ()
    #: whether ``container`` was chosen: ``container=None`` then runs on the host, while an unchosen one lets the
    #: site-config's ``[container] image`` decide
    container_chosen: bool = dataclasses.field(default=False, repr=False)
    #: how many times a call may be restarted after a warning (walltime, preemption) or a node failure (0: off;
    #: docs/requeue.md)
    requeue: int = 0
    #: how long before its end the job is warned (None: DEFAULT_SIGNAL_GRACE_S); only with requeue on
    signal_grace_s: Optional[int] = None
    #: requeue on: the call may be restarted from scratch when it saved no checkpoint
    restartable: bool = False

    @property
    def grace_s(self) -> int:
        """The warning's lead: ``signal_grace_s`` or the default."""
        return DEFAULT_SIGNAL_GRACE_S if self.signal_grace_s is None else self.signal_grace_s

    @property
    def walltime_hms(self) -> Optional[str]:
        """Walltime as ``HH:MM:SS`` (hours may exceed 24), or None."""
        if self.walltime_s is None:
            return None
        h, rest = divmod(self.walltime_s, 3600)
        m, s = divmod(rest, 60)
        return f"{h:02d}:{m:02d}:{s:02d}"

    @property
    def mem_mb(self) -> Optional[int]:
        return None if self.mem_gb is None else int(math.ceil(self.mem_gb * 1024))

    @property
    def ntasks(self) -> int:
        return self.nodes * self.tasks_per_node


#: Keyword names accepted by ``Executor(**resources)`` and ``with_resources``.
RESOURCE_NAMES = (
    "nodes",
    "tasks_per_node",
    "cpus_per_task",
    "gpus_per_node",
    "mem_gb",
    "walltime",
    "partition",
    "account",
    "qos",
    "name",
    "extra_directives",
    "launcher",
    "array_parallelism",
    "container",
    "container_binds",
    "container_runtime",
    "container_env",
    "requeue",
    "signal_grace_s",
    "restartable",
)
#: seconds between the warning and the job's end when ``signal_grace_s`` is not given (submitit's is 90)
DEFAULT_SIGNAL_GRACE_S = 90
#: ... and the options that are not resources of a site-config's ``[defaults]``: ``after`` names jobs.
OPTION_NAMES = (*RESOURCE_NAMES, "after")


def did_you_mean(word: str, choices: Any) -> str:
    """A `` (did you mean 'x'?)`` suffix, or an empty string."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and len(word) >= 3:  # 'cpus' -> 'cpus_per_task', 'gpus' -> 'gpus_per_node'
        close = [c for c in choices if c.startswith(word) or word in c.split("_")][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_names(kwargs: Mapping[str, Any], valid: Any = RESOURCE_NAMES, what: str = "resource") -> None:
    """Raise :class:`ResourceError` for the first unknown key, listing the valid ones."""
    for key in kwargs:
        if key not in valid:
            raise ResourceError(
                f"unknown {what} {key!r}{did_you_mean(key, valid)}; valid {what}s: {', '.join(valid)}"
            )


def resources_from(base: Resources, kwargs: Mapping[str, Any], *, options: bool = False) -> Resources:
    """Return ``base`` updated with user keywords, validated and normalised.

    ``options``: also accept ``after`` (an executor's keyword; a site-config's ``[defaults]`` cannot name jobs),
    given here as the job ids it resolves to (:func:`hpcbridge.after.dependency_ids` turns Jobs into ids).
    """
    check_names(kwargs, OPTION_NAMES if options else RESOURCE_NAMES)
    fields: Dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "walltime":
            fields["walltime_s"] = None if value is None else parse_walltime(value)
        elif key == "mem_gb":
            fields["mem_gb"] = None if value is None else parse_mem_gb(value)
        elif key in ("nodes", "tasks_per_node", "cpus_per_task"):
            fields[key] = _positive_int(key, value)
        elif key == "gpus_per_node":
            fields[key] = _positive_int(key, value, minimum=0)
        elif key == "array_parallelism":
            fields[key] = None if value is None else _positive_int(key, value)
        elif key in ("partition", "account", "qos"):
            fields[key] = None if value is None else _token(key, value, _TOKEN)
        elif key == "name":
            fields[key] = None if value is None else _token(key, value, _NAME)
        elif key == "extra_directives":
            fields[key] = _directives(value)
        elif key == "launcher":
            if value is not None and value not in LAUNCHERS:
                raise ResourceError(
                    f"launcher={value!r} is not known{did_you_mean(str(value), LAUNCHERS)}; "
                    f"use one of {', '.join(LAUNCHERS)} or None"
                )
            fields[key] = value
            fields["launcher_chosen"] = True
        elif key == "after":
            fields[key] = _job_ids(value)
        elif key == "container":
            fields[key] = _image(value)
            fields["container_chosen"] = True
        elif key == "container_binds":
            fields[key] = _strings(key, value, BIND, "bind mounts such as ['/data', '/src:/dst:ro'] "
                                   "(SRC[:DST[:ro|rw]], absolute paths without ':' ',' or spaces)")
        elif key == "container_runtime":
            if value is not None and value not in CONTAINER_RUNTIMES:
                raise ResourceError(
                    f"container_runtime={value!r} is not known{did_you_mean(str(value), CONTAINER_RUNTIMES)}; "
                    f"use one of {', '.join(CONTAINER_RUNTIMES)} (or None: the site-config's [container] runtime)"
                )
            fields[key] = value
        elif key == "requeue":
            fields[key] = 0 if value is None else _positive_int(key, value, minimum=0)
        elif key == "signal_grace_s":
            fields[key] = None if value is None else _positive_int(key, value)
            if fields[key] is not None and fields[key] > 65535:
                raise ResourceError(f"signal_grace_s={value!r}: Slurm warns at most 65535 s before the end")
        elif key == "restartable":
            if not isinstance(value, bool):
                raise ResourceError(f"restartable={value!r} must be True or False")
            fields[key] = value
        elif key == "container_env":
            fields[key] = _strings(key, value, ENV_PATTERN, "variable names or prefixes such as ['WANDB_API_KEY', "
                                   "'MYAPP_*']")
    return dataclasses.replace(base, **fields)


def _job_ids(value: Any) -> Tuple[str, ...]:
    """``after``'s ids, checked: each a scheduler job id such as ``123``, ``123_4``, ``123.srv``, ``123[].srv``."""
    if not isinstance(value, tuple) or not all(isinstance(v, str) and JOB_ID.match(v) for v in value):
        raise ResourceError(f"after={value!r} must be a tuple of job ids (hpcbridge.after.dependency_ids makes one)")
    return value


def _image(value: Any) -> Optional[str]:
    """``container``: None (no container), or an image: a path on the cluster or a URI (checked against the
    runtime when the job's container is decided, :mod:`hpcbridge.containers`)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\n\r\0") or value != value.strip():
        raise ResourceError(
            f"container={value!r} must be an image: its path on the cluster (a .sif or SquashFS file, or a directory) "
            "or a URI such as docker://python:3.11; None runs the job without a container"
        )
    return value


def _strings(key: str, value: Any, pattern: re.Pattern[str], what: str) -> Tuple[str, ...]:
    """A list of strings (one string is a list of one) that each match ``pattern``."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ResourceError(f"{key}={value!r} must be a list; give {what}")
    for item in items:
        if not isinstance(item, str) or not pattern.match(item):
            raise ResourceError(f"{key}: {item!r} is not valid; give {what}")
    return tuple(items)


def _positive_int(key: str, value: Any, minimum: int = 1) -> int:
    """A whole number >= ``minimum``; integer-like values (numpy.int64) are accepted, floats and bools are not."""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ResourceError(f"{key}={value!r} must be a whole number >= {minimum}")
    return number


def _token(key: str, value: Any, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ResourceError(
            f"{key}={value!r} must be letters, digits and . _ + - only (no spaces or quotes)"
        )
    return value


def _directives(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if value is not None and not isinstance(value, (list, tuple)):
        raise ResourceError(f"extra_directives={value!r} must be a list of scheduler options such as "
                            "['--constraint=a100']")
    out = []
    for item in value or ():
        if not isinstance(item, str) or not item.startswith("-") or "\n" in item or "\r" in item:
            raise ResourceError(
                f"extra_directives entry {item!r} must be one scheduler option such as '--constraint=a100'"
            )
        out.append(item)
    return tuple(out)


_WALL_FORMS = "minutes (90), 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM' or 'D-HH:MM:SS'"


def parse_walltime(value: Any) -> int:
    """Walltime in seconds from minutes (number) or Slurm's time grammar."""
    bad = ResourceError(f"walltime={value!r} is not a duration; give {_WALL_FORMS}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ResourceError(f"walltime={value!r} must be more than 0 minutes")
        return int(math.ceil(value * 60))
    if not isinstance(value, str):
        raise bad
    text = value.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise bad
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        h, mi, s = (nums + [0, 0])[:3]
        seconds = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif len(nums) == 1:
        seconds = nums[0] * 60
    elif len(nums) == 2:
        seconds = nums[0] * 60 + nums[1]
    else:
        seconds = nums[0] * 3600 + nums[1] * 60 + nums[2]
    if len(nums) >= 2 and (nums[-1] >= 60 or (len(nums) == 3 and nums[1] >= 60)):
        raise bad
    if seconds <= 0:
        raise ResourceError(f"walltime={value!r} must be more than 0 minutes")
    return seconds


_UNITS = {"": 1.0, "k": 1 / 1024**2, "m": 1 / 1024, "g": 1.0, "t": 1024.0}


def parse_mem_gb(value: Any) -> float:
    """Memory in GB from a number (GB) or a string with a unit: '512MB', '4G', '1.5TB'."""
    bad = ResourceError(f"mem_gb={value!r} is not a memory size; give GB as a number (4) or a string like '512MB'")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        gb = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", value)
        if not m:
            raise bad
        gb = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise bad
    if not math.isfinite(gb) or gb <= 0:
        raise ResourceError(f"mem_gb={value!r} must be more than 0")
    return gb
