"""hpcbridge: Python callables to Slurm and PBS jobs and back.

    >>> from hpcbridge import Executor
    >>> ex = Executor(site="local")
    >>> ex.submit(pow, 2, 10).result()
    1024

Names are imported lazily: ``python -m hpcbridge.worker`` (paid on every job start) imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "Executor",
    "Job",
    "JobState",
    "Resources",
    "Site",
    "attach",
    "environment",
    "errors",
    "init_torch_distributed",
    "load_site",
    "suggest",
    "__version__",
]

_LAZY = {
    "Executor": ("hpcbridge.executor", "Executor"),
    "attach": ("hpcbridge.attaching", "attach"),
    "Job": ("hpcbridge.job", "Job"),
    "JobState": ("hpcbridge.state", "JobState"),
    "Resources": ("hpcbridge.spec", "Resources"),
    "Site": ("hpcbridge.sites", "Site"),
    "load_site": ("hpcbridge.sites", "load_site"),
    "suggest": ("hpcbridge.right_size", "suggest"),
    "errors": ("hpcbridge.errors", None),
    "environment": ("hpcbridge.jobenv", "environment"),
    "init_torch_distributed": ("hpcbridge.distributed", "init_torch_distributed"),
    # in the job, requeue on (docs/requeue.md); not in the pinned __all__
    "checkpoint": ("hpcbridge.checkpoint", None),
    "should_stop": ("hpcbridge.checkpoint", "should_stop"),
    "time_left": ("hpcbridge.checkpoint", "time_left"),
}

if TYPE_CHECKING:  # pragma: no cover
    from . import checkpoint as checkpoint
    from . import errors
    from .attaching import attach
    from .checkpoint import should_stop as should_stop
    from .checkpoint import time_left as time_left
    from .distributed import init_torch_distributed
    from .executor import Executor
    from .job import Job
    from .jobenv import environment
    from .right_size import suggest
    from .sites import Site, load_site
    from .spec import Resources
    from .state import JobState


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'hpcbridge' has no attribute {name!r}") from None
    import importlib

    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
