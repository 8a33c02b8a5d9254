"""Process-group signalling shared by the local transport and the local site's runner."""

from __future__ import annotations

import os


def kill_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group that is gone (or not ours) is left alone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):  # gone already
        pass
