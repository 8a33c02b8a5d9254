"""Transports: how commands and files reach the cluster side.

Cheap to import (the worker imports :mod:`.local` through it): the SSH transport, and paramiko with it, is
imported only when :func:`make_transport` is asked for one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AbstractSet, Optional

from ..errors import ConfigError
from .base import Completed, Transport

if TYPE_CHECKING:
    from ..sites import Site

__all__ = ["Completed", "Transport", "make_transport"]


def make_transport(site: Site, *, safe_commands: Optional[AbstractSet[str]] = None) -> Transport:
    """The transport ``site`` names (``local`` or ``ssh``), with the SSH endpoint resolved from its ``[ssh]`` table.

    ``safe_commands``: the programs an SSH transport runs again after a dropped connection (default: the generic
    read-only ones and the site's scheduler's queries, ``Scheduler.safe_commands``).
    """
    if site.transport == "local":
        from .local import LocalTransport

        return LocalTransport()
    if site.transport == "ssh":
        try:
            from .ssh import SSHTransport, host_spec
        except ImportError as exc:
            raise ConfigError(
                f"site {site.name!r}: the ssh transport is not available ({exc}); install it with: "
                "pip install 'hpcbridge[ssh]' (or pip install paramiko)"
            ) from exc
        from ..schedulers import scheduler_class
        from .ssh import SAFE_COMMANDS

        spec = host_spec(site.ssh, site_name=site.name)
        if safe_commands is None:
            safe_commands = SAFE_COMMANDS | scheduler_class(site.scheduler).safe_commands
        return SSHTransport(spec, safe_commands=safe_commands)
    raise ConfigError(f"site {site.name!r}: unknown transport {site.transport!r}")
