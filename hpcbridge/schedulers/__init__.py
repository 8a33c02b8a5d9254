"""Scheduler adapters, one module per batch system, and their registry.

A site-config's ``scheduler`` names a row of :data:`SCHEDULERS`; the adapter's module is imported only when it is
first used, so importing this package stays cheap (the in-job worker never imports an adapter).
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Dict, Tuple, Type

if TYPE_CHECKING:  # pragma: no cover
    from .base import Scheduler, SiteConfig

#: scheduler name -> (module, class) of its adapter
SCHEDULERS: Dict[str, Tuple[str, str]] = {
    "slurm": (".slurm", "SlurmScheduler"),
    "pbs": (".pbs", "PBSScheduler"),
    "local": (".local", "LocalScheduler"),
}


def scheduler_class(name: str) -> Type[Scheduler]:
    """The adapter class of scheduler ``name`` (its module imported now); ConfigError for an unknown one."""
    if name not in SCHEDULERS:
        from ..errors import ConfigError  # here: the in-job side imports this package for allocation.py

        raise ConfigError(f"the {name!r} scheduler is not supported yet (known: {', '.join(SCHEDULERS)})")
    module, cls = SCHEDULERS[name]
    adapter: Type[Scheduler] = getattr(importlib.import_module(module, __name__), cls)
    return adapter


def scheduler_for(site: SiteConfig, root: str) -> Scheduler:
    """The adapter for ``site``, whose job folders are under ``root``."""
    if site.scheduler not in SCHEDULERS:
        from ..errors import ConfigError

        raise ConfigError(f"site {site.name!r}: the {site.scheduler!r} scheduler is not supported yet")
    return scheduler_class(site.scheduler).from_site(site, root)


def supports_after(name: str) -> bool:
    """Whether jobs of scheduler ``name`` can wait for others (``after=``); False for an unknown name."""
    return name in SCHEDULERS and scheduler_class(name).supports_after


@functools.cache
def scrub_prefixes() -> Tuple[str, ...]:
    """The prefixes of every registered scheduler's in-job variables (an enclosing job's, whatever its kind)."""
    return tuple(dict.fromkeys(p for name in SCHEDULERS for p in scheduler_class(name).scrub_prefixes))
