"""One command on one exec channel: its input sent, its output drained, and its end told apart from a drop.

What a command printed before the marker line (the login shell's noise) is cut off here; a dropped link raises
:class:`Lost` and a local input that cannot be read :class:`SourceError`, for the connection to decide about.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import threading
import time
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

import paramiko

from ...errors import CommandTimeoutError, RemoteCommandError
from .commands import after_marker
from .messages import fmt_bytes

#: stdin up to this size is sent at once; a bigger one goes from a thread while this one reads (no window deadlock)
INLINE_INPUT_BYTES = 256 * 1024
#: how much is read (or sent) at a time
CHUNK_BYTES = 1 << 20
#: the longest wait for output before the deadline and the connection are looked at again
POLL_INTERVAL_S = 1.0
#: how long the end of a command waits for its input thread to finish
SENDER_JOIN_S = 5.0

#: a command's stdin: bytes, or a function giving its chunks (called again when a retry starts over)
Input = Union[bytes, Callable[[], Iterable[Union[bytes, memoryview]]], None]
Sink = Callable[[bytes], Any]


class Lost(Exception):
    """The connection died under an operation."""


class SourceError(Exception):
    """Reading a command's input failed here (a local file): raised as ``error`` itself, never taken for a drop."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Stdout:
    """A command's stdout: the login noise up to the marker is dropped; the rest is kept, or streamed to a sink."""

    def __init__(self, marker: str, sink: Optional[Sink]) -> None:
        self.token = marker.encode() + b"\n"
        self.sink = sink
        self.head = bytearray()  # up to and including the marker
        self.found = False
        self.body = bytearray()

    def add(self, data: bytes) -> None:
        if self.found:
            if self.sink is not None:
                self.sink(data)
            else:
                self.body += data
            return
        self.head += data
        at = self.head.find(self.token)
        if at >= 0:
            self.found = True
            rest = bytes(self.head[at + len(self.token) :])
            del self.head[at + len(self.token) :]
            if rest:
                self.add(rest)

    def result(self) -> Optional[bytes]:
        return bytes(self.body) if self.found else None


class _Sender:
    """A big input sent from its own thread; what went wrong is kept apart by where it came from."""

    def __init__(self, ch: paramiko.Channel, chunks: Callable[[], Iterable[Union[bytes, memoryview]]]) -> None:
        self.ch = ch
        self.chunks = chunks
        self.write_error: List[BaseException] = []  # sending failed: the connection (or the remote end) went away
        self.source_error: List[BaseException] = []  # reading what to send failed (a local file): the link is fine
        self.thread = threading.Thread(target=self._send, name="hpcbridge-ssh-send", daemon=True)
        self.thread.start()

    def _send(self) -> None:
        reading = True  # where an error comes from: reading the source (each next()), or sending
        try:
            source = iter(self.chunks())
            while True:
                reading = True
                chunk = next(source, None)
                reading = False
                if chunk is None:
                    break
                self.ch.sendall(chunk)  # type: ignore[arg-type]  # any buffer works (written to a BytesIO)
            self.ch.shutdown_write()
        except BaseException as exc:
            if reading:
                # the remote end gets EOF (a cut-short upload removes its file); not ch.close(): that closes the
                # channel's fd, which the reading thread may be in select() on (EBADF: a "drop")
                self.source_error.append(exc)
                with contextlib.suppress(Exception):
                    self.ch.shutdown_write()
            else:
                self.write_error.append(exc)
                self.ch.close()  # the remote end must not wait for the rest


def collect(
    ch: paramiko.Channel,
    t: paramiko.Transport,
    input: Input,
    deadline: Optional[float],
    *,
    marker: str,
    label: str,
    what: str,
    sink: Optional[Sink] = None,
) -> Tuple[int, bytes, bytes]:
    """Send ``input`` to the started command on ``ch`` and wait for its end: (exit code, stdout, stderr)."""
    out = _Stdout(marker, sink)
    err = bytearray()
    sender = _send_input(ch, input)
    _drain(ch, t, out, err, deadline, sender, f"command on {label} timed out while trying to {what}")
    status = _exit_status(ch, t, deadline, sender, f"command on {label} timed out while trying to {what}")
    stdout = out.result()
    stderr = after_marker(bytes(err), marker)
    if stdout is None:
        raise RemoteCommandError(
            f"the login shell on {label} did not run the command to {what} (its startup files may exit or exec "
            "another program); make ~/.bashrc (or your shell's rc file) return early for non-interactive shells",
            exit_code=status,
            stdout=fmt_bytes(bytes(out.head)),
            stderr=bytes(err).decode("utf-8", "replace"),
        )
    return status, stdout, (stderr if stderr is not None else bytes(err))


def _send_input(ch: paramiko.Channel, input: Input) -> Optional[_Sender]:
    """Small input at once, then EOF; a big one (or a stream) from a :class:`_Sender` thread."""
    if input is None or (isinstance(input, bytes) and len(input) <= INLINE_INPUT_BYTES):
        if input:
            ch.sendall(input)
        ch.shutdown_write()
        return None
    if isinstance(input, bytes):
        return _Sender(ch, functools.partial(_slices, memoryview(input), CHUNK_BYTES))
    return _Sender(ch, input)


def _drain(
    ch: paramiko.Channel,
    t: paramiko.Transport,
    out: _Stdout,
    err: bytearray,
    deadline: Optional[float],
    sender: Optional[_Sender],
    timed_out: str,
) -> None:
    """Read stdout and stderr until EOF (or until the input could not be read); :class:`Lost` on a drop."""
    fd = ch.fileno()
    while True:
        _read_ready(ch, out, err)
        if ch.eof_received or ch.closed or (sender is not None and sender.source_error):
            _read_ready(ch, out, err)  # what arrived together with the EOF
            return
        wait = POLL_INTERVAL_S if deadline is None else deadline - time.monotonic()
        if wait <= 0:
            raise CommandTimeoutError(f"{timed_out}; it may still be running there")
        select.select([fd], [], [], min(wait, POLL_INTERVAL_S))
        if not t.is_active():
            while ch.recv_ready():
                out.add(ch.recv(CHUNK_BYTES))
            if not (ch.eof_received and ch.exit_status_ready()):
                raise Lost("transport closed")


def _read_ready(ch: paramiko.Channel, out: _Stdout, err: bytearray) -> None:
    while ch.recv_ready():
        out.add(ch.recv(CHUNK_BYTES))
    while ch.recv_stderr_ready():
        err += ch.recv_stderr(CHUNK_BYTES)


def _exit_status(
    ch: paramiko.Channel, t: paramiko.Transport, deadline: Optional[float], sender: Optional[_Sender], timed_out: str
) -> int:
    """The command's exit code once its output has ended; a failed input or a drop raises instead."""
    if sender is not None and sender.source_error:  # a local file could not be read: its own error, the link is fine
        raise SourceError(sender.source_error[0])
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not ch.status_event.wait(left):
        raise CommandTimeoutError(timed_out)
    if sender is not None:
        sender.thread.join(SENDER_JOIN_S)
    status: int = ch.exit_status
    if status == -1 and not t.is_active():
        raise Lost("transport closed")
    write_error = sender.write_error if sender is not None else []
    if write_error and not isinstance(write_error[0], (paramiko.SSHException, EOFError, socket.error)):
        raise write_error[0]  # not a connection problem (e.g. a chunk that is not a buffer)
    if write_error and status == -1:
        raise Lost(str(write_error[0]))
    return status


def _slices(view: memoryview, size: int) -> Iterable[memoryview]:
    return (view[i : i + size] for i in range(0, len(view), size))
