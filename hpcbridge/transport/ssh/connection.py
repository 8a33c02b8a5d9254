"""One authenticated SSH connection: the TCP connect, the bastions (ProxyJump), the handshake, and running a
command on an exec channel with reconnects after a drop (only when running it again is safe)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
import uuid
from typing import Any, Callable, List, Optional, Sequence, Tuple

import paramiko

from ...errors import ConnectionLostError, HostUnreachableError, TransportError
from . import hostkeys
from .auth import KeyCache, authenticate
from .channel import Input, Lost, Sink, SourceError, collect
from .commands import command_line
from .config import HostSpec
from .messages import unreachable_message

log = logging.getLogger("hpcbridge")

#: OpenSSH's default MaxSessions: channels one connection may have open at once
MAX_SESSIONS = 10
#: exec channels open at once per connection: two below MAX_SESSIONS, as sshd frees a closed channel's slot only a
#: moment after the close (Connection._open_session)
MAX_EXEC_CHANNELS = 8
#: waits before opening a refused channel again (None: give up)
CHANNEL_RETRY_WAITS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, None)
#: receive window per channel (paramiko's default of 2 MiB caps throughput at window / RTT)
WINDOW_BYTES = 16 * 1024 * 1024
MAX_PACKET_BYTES = 32 * 1024
#: bytes and packets after which paramiko would start a re-key itself
REKEY_AFTER_BYTES = 2**40
REKEY_AFTER_PACKETS = 2**40
#: how long an operation that is safe to retry keeps trying to reconnect after a drop
RECONNECT_WINDOW_S = 60.0
#: waits between reconnect attempts after the first, immediate one: doubling from the first up to the last
RECONNECT_FIRST_WAIT_S = 0.5
RECONNECT_MAX_WAIT_S = 8.0
#: unanswered TCP keepalive probes before the kernel gives the connection up
TCP_KEEPALIVE_PROBES = 3


@dataclasses.dataclass
class Stats:
    """What one connection did, for benchmarks and tests (every command and transfer is one exec channel: one
    round trip each)."""

    connects: int = 0
    reconnects: int = 0
    exec_channels: int = 0

    @property
    def round_trips(self) -> int:
        return self.exec_channels


class Connection:
    """One authenticated SSH connection, shared process-wide (:func:`~.pool.connection_for`); reconnects on
    demand."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.stats = Stats()
        self.marker = f"__hpcbridge_{uuid.uuid4().hex}__"
        self.users = 0
        self.auth_method = ""
        self.banner: Optional[bytes] = None
        self.home: Optional[str] = None
        #: the remote user's uid, learnt by the first read_with_owners (``id -u`` in its command, not a round trip)
        self.uid: Optional[int] = None
        self._lock = threading.RLock()
        self._channels = threading.BoundedSemaphore(MAX_EXEC_CHANNELS)
        self._transport: Optional[paramiko.Transport] = None
        self._hops: List[paramiko.Transport] = []
        self._keys: KeyCache = {}  # decrypted identity files, for reconnects (never passphrases)
        self._closed = False

    # -- connecting ---------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the connection is not used again)."""
        return self._closed

    @property
    def local_port(self) -> Optional[int]:
        """The client-side TCP port of the connection (of the first hop), None when not connected."""
        t = self._hops[0] if self._hops else self._transport
        if t is None:
            return None
        try:
            port: int = t.sock.getsockname()[1]  # type: ignore[union-attr]
            return port
        except (OSError, AttributeError, IndexError, TypeError):
            return None

    def transport(self) -> paramiko.Transport:
        """The live paramiko transport, connecting (again) first when there is none."""
        t = self._transport
        if t is not None and t.is_active():
            return t
        with self._lock:
            t = self._transport
            if t is not None and t.is_active():
                return t
            if self._closed:
                raise TransportError(f"the SSH connection to {self.spec.label} was closed")
            again = self.stats.connects > 0
            self._drop()
            self._transport = self._connect()
            if again:
                self.stats.reconnects += 1
                log.warning("hpcbridge: reconnected to %s", self.spec.label)
            self.stats.connects += 1
            return self._transport

    def _connect(self) -> paramiko.Transport:
        spec = self.spec
        sock: Any = None
        hops: List[paramiko.Transport] = []
        try:
            for i, hop in enumerate(spec.jumps):
                t = self._open(hop, sock)
                hops.append(t)
                nxt = spec.jumps[i + 1] if i + 1 < len(spec.jumps) else spec
                try:
                    sock = t.open_channel(
                        "direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0), timeout=nxt.connect_timeout_s
                    )
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise HostUnreachableError(
                        unreachable_message(
                            nxt, f"the bastion {hop.alias} could not connect to it ({exc})", via=f" via {hop.alias}"
                        )
                    ) from exc
            t = self._open(spec, sock)
        except BaseException:
            for h in reversed(hops):
                h.close()
            raise
        self._hops = hops
        return t

    def _open(self, spec: HostSpec, sock: Any) -> paramiko.Transport:
        if sock is None:
            sock = tcp_connect(spec)
        t = paramiko.Transport(sock, default_window_size=WINDOW_BYTES, default_max_packet_size=MAX_PACKET_BYTES)
        # paramiko re-keys every 512 MB by default, and a re-key in the middle of a stream stalls for its 30 s
        # timeout (measured here: "Key-exchange timed out waiting for key negotiation"); leave re-keying to the
        # server (OpenSSH: after 2^32 cipher blocks = 64 GB for AES). If one stalls anyway, the drop is retried.
        t.packetizer.REKEY_BYTES = REKEY_AFTER_BYTES
        t.packetizer.REKEY_PACKETS = REKEY_AFTER_PACKETS
        try:
            known = hostkeys.load_known_hosts(spec)
            hostkeys.prefer_known_key_types(t, spec, known)
            hostkeys.prefer_fast_ciphers(t)
            try:
                t.start_client(timeout=spec.connect_timeout_s)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise HostUnreachableError(
                    unreachable_message(spec, f"the SSH handshake failed ({exc or type(exc).__name__})")
                ) from exc
            hostkeys.check_host_key(spec, t.get_remote_server_key(), known)
            # the pre-login banner (sshd's Banner) of the login node: kept for whoever wants to show it, never
            # mixed with output
            self.auth_method = authenticate(spec, t, self._keys, self._keep_banner if spec is self.spec else None)
            if spec.keepalive_s > 0:
                t.set_keepalive(max(1, int(spec.keepalive_s)))
        except BaseException:
            t.close()
            raise
        return t

    def _keep_banner(self, banner: Optional[bytes]) -> None:
        self.banner = banner

    def _drop(self) -> None:
        """Forget a dead connection (closing what is left of it)."""
        for thing in [self._transport, *reversed(self._hops)]:
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # already dead
                    pass
        self._transport = None
        self._hops = []

    def mark_dead(self, t: paramiko.Transport) -> None:
        """Drop ``t`` if it is still the current transport (an SSH-level error left it unusable)."""
        with self._lock:
            if self._transport is t:
                self._drop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    # -- commands -----------------------------------------------------------------------------------------
    def _open_session(self, t: paramiko.Transport) -> paramiko.Channel:
        """A new channel. sshd frees a closed channel's session slot a moment after the close, so under churn it
        can refuse one even below MaxSessions: nothing was sent then, and opening again shortly after is safe.

        paramiko keeps a refusal's reason in one slot per connection (``saved_exception``), which the first
        thread to look takes: with several threads opening channels at once, a refused one may see no reason and
        raise a plain SSHException ("Unable to open channel."). While the connection is up, that is a refusal
        too, not a drop (treated as a drop, it closed the shared connection under every command in flight)."""
        for wait in CHANNEL_RETRY_WAITS_S:
            try:
                return t.open_session(timeout=self.spec.connect_timeout_s)
            except paramiko.SSHException as exc:  # ChannelException is one
                if not isinstance(exc, paramiko.ChannelException) and not t.is_active():
                    raise  # the connection went away: a drop
                if wait is None:
                    raise TransportError(
                        f"{self.spec.label} refused a new SSH channel ({exc}); the server's MaxSessions may be "
                        f"below {MAX_EXEC_CHANNELS + 2}"
                    ) from exc
                time.sleep(wait)
        raise AssertionError("unreachable")

    def exec(
        self,
        script: str,
        args: Sequence[str],
        *,
        input: Input = None,
        timeout: Optional[float] = None,
        safe: bool,
        what: str,
        sink: Optional[Sink] = None,
        restart: Optional[Callable[[], Any]] = None,
    ) -> Tuple[int, bytes, bytes]:
        """Run ``script`` under /bin/sh with ``args``; (exit code, stdout, stderr) with the login noise cut off.

        ``sink``: the command's stdout (after the marker) goes there as it arrives instead of into the result;
        ``restart()`` is called before a retry, to drop what the sink got from the failed attempt.

        A drop before the command was sent is always retried on a new connection; after it was sent only when
        ``safe`` (else :class:`ConnectionLostError` with ``maybe_ran=True``).
        """
        command = command_line(script, args, self.marker)
        deadline = None if timeout is None else time.monotonic() + timeout
        give_up = time.monotonic() + RECONNECT_WINDOW_S
        failures = 0
        while True:
            if failures > 1:  # the first retry is at once, then 0.5, 1, 2 ... 8 s apart
                time.sleep(min(RECONNECT_FIRST_WAIT_S * 2 ** (failures - 2), RECONNECT_MAX_WAIT_S))
            try:
                t = self.transport()
            except HostUnreachableError:
                if self.stats.connects == 0 or time.monotonic() > give_up:
                    raise  # never connected, or the host stayed away for the whole window
                failures += 1
                continue
            sent = False
            try:
                with self._channels:
                    ch = self._open_session(t)
                    try:
                        self.stats.exec_channels += 1
                        sent = True
                        self._send_exec(ch, command)
                        return collect(ch, t, input, deadline, marker=self.marker, label=self.spec.label, what=what,
                                       sink=sink)
                    finally:
                        ch.close()
            except SourceError as exc:  # nothing wrong with the connection: not retried, not reconnected
                raise exc.error from None
            except (Lost, paramiko.SSHException, EOFError, OSError) as exc:
                # an SSH-level error on a live transport (e.g. "Key-exchange timed out" during a rekey under load)
                # leaves it unusable: it is closed and treated like a drop
                self.mark_dead(t)
                if sent and not safe:
                    raise ConnectionLostError(
                        f"the SSH connection to {self.spec.label} dropped while trying to {what}; the command had "
                        "been sent and may or may not have run there: check before repeating it",
                        maybe_ran=True,
                    ) from exc
                if time.monotonic() > give_up:
                    raise ConnectionLostError(
                        f"the SSH connection to {self.spec.label} dropped while trying to {what}, and reconnecting "
                        f"did not work for {RECONNECT_WINDOW_S:g} s; check the network and `ssh {self.spec.alias} true`"
                    ) from exc
                log.warning("hpcbridge: SSH connection to %s dropped (%s); reconnecting", self.spec.label,
                            exc or type(exc).__name__)
                if restart is not None:
                    restart()
                failures += 1

    def _send_exec(self, ch: paramiko.Channel, command: str) -> None:
        """Send the exec request (a seam: the live tests cut the connection right after it)."""
        ch.exec_command(command)


def tcp_connect(spec: HostSpec) -> socket.socket:
    """A TCP connection to ``spec`` with TCP_NODELAY and keepalives (the first hop: no bastion in front).

    Keepalives every ``keepalive_s`` (idle time and probe interval, 3 probes) and a TCP_USER_TIMEOUT of 4 x
    ``keepalive_s``; ``keepalive_s = 0`` turns them off (SO_KEEPALIVE 0, no user timeout: the kernel's defaults).
    """
    try:
        sock = socket.create_connection((spec.hostname, spec.port), timeout=spec.connect_timeout_s)
    except socket.gaierror as exc:
        raise HostUnreachableError(unreachable_message(spec, f"unknown host name ({exc.strerror})")) from exc
    except socket.timeout as exc:
        raise HostUnreachableError(unreachable_message(spec, f"no answer within {spec.connect_timeout_s:g} s")) from exc
    except OSError as exc:
        raise HostUnreachableError(unreachable_message(spec, exc.strerror or str(exc))) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # ~44 ms -> ~2 ms per command (Nagle + delayed ACK)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if spec.keepalive_s > 0 else 0)
    if spec.keepalive_s <= 0:
        sock.settimeout(None)
        return sock
    idle_s = max(1, int(spec.keepalive_s))
    for opt, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", idle_s), ("TCP_KEEPCNT", TCP_KEEPALIVE_PROBES),
                       ("TCP_USER_TIMEOUT", (TCP_KEEPALIVE_PROBES + 1) * idle_s * 1000)):  # (ms)
        if hasattr(socket, opt):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
            except OSError:
                pass
    sock.settimeout(None)
    return sock
