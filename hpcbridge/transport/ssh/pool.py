"""The process-wide pool: one shared connection per endpoint and settings, released by its last user and closed at
exit. A forked child never shares its parent's connections."""

from __future__ import annotations

import atexit
import os
import threading
from typing import Dict, Tuple

from .config import HostSpec
from .connection import Connection

_POOL: Dict[Tuple[int, HostSpec], Connection] = {}
_POOL_LOCK = threading.Lock()


def connection_for(spec: HostSpec) -> Connection:
    """The shared connection to ``spec``'s endpoint (created, not yet connected, on first use)."""
    # the same endpoint with the same settings (keys, known_hosts ...); a forked child never shares its parent's
    key = (os.getpid(), spec)
    with _POOL_LOCK:
        conn = _POOL.get(key)
        if conn is None or conn.closed:
            conn = _POOL[key] = Connection(spec)
        conn.users += 1
        return conn


def release(conn: Connection) -> None:
    """One user less of ``conn``; the last one closes it."""
    with _POOL_LOCK:
        conn.users -= 1
        if conn.users > 0:
            return
        for key, c in list(_POOL.items()):
            if c is conn:
                del _POOL[key]
    conn.close()


@atexit.register
def _close_all() -> None:
    with _POOL_LOCK:
        conns = list(_POOL.values())
        _POOL.clear()
    for conn in conns:
        conn.close()
