"""SSH transport: the cluster reached from anywhere through one shared, authenticated paramiko connection.

What it guarantees (docs/ssh.md):

* **one connection per endpoint, process-wide** (keyed by resolved host, user, port and bastions), shared by every
  executor, backend and poller thread; ``TCP_NODELAY`` and TCP/SSH keepalives on the socket; at most
  :data:`~.connection.MAX_EXEC_CHANNELS` exec channels open at once so sshd's ``MaxSessions`` (10) is never hit;
* **~/.ssh/config honoured** (Host aliases, HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump,
  UserKnownHostsFile, StrictHostKeyChecking, HostKeyAlias, ConnectTimeout, ServerAliveInterval); ssh-agent keys;
  an encrypted key's passphrase or a keyboard-interactive (MFA) answer is asked once per connection, never stored;
* **host keys checked** against ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts: unknown -> refused with the
  fingerprint and the command that trusts it; changed -> refused loudly. Nothing is auto-accepted unless
  ~/.ssh/config says ``StrictHostKeyChecking accept-new`` (or ``no``) for that host;
* **commands are argv lists**, each word quoted once, run by ``/bin/sh`` after a marker line, so whatever the login
  shell's startup files print (banners, ``echo`` in ~/.bashrc) never reaches parsed output;
* **bulk files in one round trip**: ``write_files``/``read_files`` move any number of files as one tar stream over
  one exec channel (each file written atomically: temporary name, then rename); a large single file is streamed
  over one exec channel each way (:meth:`SSHTransport.upload`, :meth:`SSHTransport.download`: paramiko's SFTP is
  slower both ways, docs/ssh.md);
* **reconnect after a drop**, retrying only what is safe: reads, listings, status queries and the idempotent file
  operations are retried on a new connection; a command that may already have run (``sbatch``) raises
  :class:`~hpcbridge.errors.ConnectionLostError` with ``maybe_ran=True`` and the caller decides (the backend reads
  the submission's record on the cluster side, or looks the job up by its tag, instead of submitting it twice).

Modules, each one job: ``config`` (where to connect) and ``messages``; ``commands`` (remote command lines, what is
safe to retry); ``hostkeys``; ``auth``; ``channel`` (one command on one exec channel); ``connection`` (connecting,
bastions, reconnects); ``pool`` (one connection per endpoint); ``transport`` (:class:`SSHTransport` and its file
operations).
"""

from __future__ import annotations

from .auth import set_prompt
from .commands import SAFE_COMMANDS, is_safe
from .config import HostSpec, host_spec
from .connection import Connection, Stats
from .pool import connection_for
from .transport import SSHTransport

__all__ = [
    "SAFE_COMMANDS",
    "Connection",
    "HostSpec",
    "SSHTransport",
    "Stats",
    "connection_for",
    "host_spec",
    "is_safe",
    "set_prompt",
]
