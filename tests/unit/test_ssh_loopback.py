"""The SSH transport end to end against an in-process paramiko server on a socket pair (no network, no sshd):
commands and their framing, file operations, streams, drops, timeouts. The server runs each command with the local
bash, after some login noise; the live tests (tests/live/test_ssh_live.py) do the same against a real sshd."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import paramiko
import pytest

from hpcbridge.errors import CommandTimeoutError, ConnectionLostError, RemoteCommandError
from hpcbridge.transport.base import Owner
from hpcbridge.transport.ssh import HostSpec, SSHTransport
from hpcbridge.transport.ssh import connection as connection_module
from hpcbridge.transport.ssh import transport as transport_module

NOISE = "echo motd; echo motd-err >&2; printf half; "  # what a chatty ~/.bashrc prints before the command


class _Server(paramiko.ServerInterface):
    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=_serve, args=(channel, command.decode()), daemon=True).start()
        return True


def _serve(ch: paramiko.Channel, command: str) -> None:
    """What sshd does with an exec request: the login shell parses the line; stdin, stdout, stderr and the exit code
    go over the channel."""
    p = subprocess.Popen(["bash", "-c", NOISE + command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None

    def feed() -> None:
        try:
            for data in iter(lambda: ch.recv(1 << 16), b""):
                p.stdin.write(data)  # type: ignore[union-attr]
            p.stdin.close()  # type: ignore[union-attr]
        except (OSError, EOFError):
            pass

    def pump(src: Any, send: Any) -> None:
        try:
            for chunk in iter(lambda: src.read1(1 << 16), b""):
                send(chunk)
        except (OSError, EOFError):
            pass

    threading.Thread(target=feed, daemon=True).start()
    pumps = [threading.Thread(target=pump, args=(p.stdout, ch.sendall)),
             threading.Thread(target=pump, args=(p.stderr, ch.sendall_stderr))]
    for t in pumps:
        t.start()
    rc = p.wait()
    for t in pumps:
        t.join()
    try:
        ch.send_exit_status(rc)
        ch.close()
    except (OSError, EOFError):
        pass


@pytest.fixture(scope="module")
def server_key() -> paramiko.PKey:
    return paramiko.RSAKey.generate(2048)


@pytest.fixture()
def make(tmp_path: Path, server_key: paramiko.PKey, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make(**kw)``: an SSHTransport whose every connection (and reconnection) reaches a new in-process server."""
    made: List[SSHTransport] = []

    def tcp_connect(spec: HostSpec) -> socket.socket:
        client, server = socket.socketpair()
        t = paramiko.Transport(server)
        t.add_server_key(server_key)
        threading.Thread(target=t.start_server, kwargs={"server": _Server()}, daemon=True).start()
        return client

    monkeypatch.setattr(connection_module, "tcp_connect", tcp_connect)
    paramiko_log = logging.getLogger("paramiko")  # the server side of a cut connection logs its reset
    level = paramiko_log.level
    paramiko_log.setLevel(logging.CRITICAL)

    def make(**kw: Any) -> SSHTransport:
        spec = HostSpec(alias=f"loop-{len(made)}-{os.urandom(4).hex()}", hostname="loopback", user="me",
                        known_hosts=(str(tmp_path / "known_hosts"),), global_known_hosts=(),
                        strict_host_key_checking="accept-new", agent=False)
        made.append(SSHTransport(spec, **kw))
        return made[-1]

    yield make
    for t in made:
        t.close()
    paramiko_log.setLevel(level)


def _cut_after(t: SSHTransport, delay_s: float) -> None:
    """The connection drops ``delay_s`` from now (as a cut network would: the client side is closed)."""
    current = t.conn.transport()
    threading.Timer(delay_s, t.conn.mark_dead, args=(current,)).start()


def test_a_command_gets_its_output_and_exit_code_without_the_login_noise(make: Any) -> None:
    t = make()
    c = t.run(["sh", "-c", 'echo out; echo err >&2; printf "%s" "$X"; exit 3'], env={"X": "it's"})
    assert (c.returncode, c.stdout, c.stderr) == (3, "out\nit's", "err\n")
    big = os.urandom(600_000)  # above what is sent at once: it goes from a thread while the output is read
    assert t.run(["sha256sum"], input=big).stdout.split()[0] == hashlib.sha256(big).hexdigest()
    assert t.conn.auth_method == "none"
    assert (t.stats.connects, t.stats.reconnects) == (1, 0)


def test_file_operations_round_trip(make: Any, tmp_path: Path) -> None:
    t = make()
    root = str(tmp_path / "remote")
    t.makedirs(root + "/a/b", root + "/c")
    blob = os.urandom(300_000)
    t.write_files({root + "/a/b/one": b"one", root + "/c/two": blob})
    got = t.read_files([root + "/a/b/one", root + "/c/two", root + "/missing"])
    assert got == {root + "/a/b/one": b"one", root + "/c/two": blob}
    assert sorted(t.listdir(root)) == ["a", "c"] and t.listdir(root + "/nope") == []
    assert (t.read_tail(root + "/a/b/one", 2), t.read_tail(root + "/nope", 2)) == (b"ne", None)
    assert (t.read_from(root + "/a/b/one", 1), t.read_from(root + "/a/b/one", 9)) == (b"ne", b"")
    t.remove_tree(root)
    assert not os.path.exists(root)


def test_read_with_owners_reports_owners_and_modes_in_the_same_one_round_trip(make: Any, tmp_path: Path) -> None:
    """What decides whether a result file is unpickled (outcome.result_refusal), read over SSH: the folders'
    headers and the files in one tar stream, the reader's uid on its first line."""
    t = make()
    folder = tmp_path / "job"
    (folder / "res").mkdir(parents=True)
    folder.chmod(0o770)
    (folder / "res").chmod(0o700)
    (folder / "res" / "0.0.pkl").write_bytes(b"zero")
    (folder / "res" / "0.0.pkl").chmod(0o600)
    os.symlink("/etc/passwd", folder / "res" / "1.0.pkl")  # its target's owner and mode, as the local transport
    os.mkfifo(folder / "res" / "2.0.pkl")  # not a file: left out, and it does not hang the read
    paths = [str(folder / "res" / f"{i}.0.pkl") for i in range(4)]
    t.run(["true"])
    before = t.stats.round_trips
    got = t.read_with_owners(paths, [str(folder), str(folder / "res"), str(tmp_path / "gone")])
    assert t.stats.round_trips - before == 1
    passwd = os.stat("/etc/passwd")
    assert got.uid == os.getuid()
    assert got.files == {paths[0]: b"zero", paths[1]: Path("/etc/passwd").read_bytes()}
    me = os.getuid()
    assert got.owners == {str(folder): Owner(me, 0o770), str(folder / "res"): Owner(me, 0o700),
                          paths[0]: Owner(me, 0o600), paths[1]: Owner(passwd.st_uid, passwd.st_mode & 0o7777)}
    # the uid is asked once per connection (``id -u`` in the first read): later reads know it, in one round trip too
    before = t.stats.round_trips
    assert t.read_with_owners(paths, [str(folder), str(folder / "res")]) == got
    assert t.stats.round_trips - before == 1 and t.conn.uid == me
    assert t.read_files(paths) == got.files  # the plain read is the same read, without the facts


def test_large_files_stream_both_ways_and_an_unreadable_local_file_leaves_nothing(
    make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make()
    data = os.urandom(3 << 20)
    src, dest = tmp_path / "src", str(tmp_path / "up")
    src.write_bytes(data)
    t.upload(data, dest, mode=0o640)
    assert Path(dest).read_bytes() == data and oct(os.stat(dest).st_mode & 0o777) == "0o640"
    t.upload(str(src), dest)
    assert t.download(dest) == data
    t.download(dest, str(tmp_path / "down"))
    assert (tmp_path / "down").read_bytes() == data
    with pytest.raises(RemoteCommandError, match="could not download"):
        t.download(str(tmp_path / "nope"))
    real = transport_module._file_chunks

    def failing_disk(name: str, size: int, total: int) -> Iterator[bytes]:
        chunks = iter(real(name, size, total))
        yield next(chunks)
        raise OSError(5, "Input/output error", name)

    monkeypatch.setattr(transport_module, "_file_chunks", failing_disk)
    with pytest.raises(OSError, match=r"^\[Errno 5\] Input/output error: "):
        t.upload(str(src), str(tmp_path / "eio"))
    assert t.run(["true"]).returncode == 0 and (t.stats.connects, t.stats.reconnects) == (1, 0)


def test_a_drop_retries_a_safe_command_and_reports_an_unsafe_one_as_maybe_ran(make: Any) -> None:
    t = make()
    _cut_after(t, 0.5)
    with pytest.raises(ConnectionLostError, match="had been sent and may or may not have run") as err:
        t.run(["sleep", "3"])
    assert err.value.maybe_ran is True
    safe = make(safe_commands={"sleep"})
    _cut_after(safe, 0.5)
    assert safe.run(["sleep", "1"]).returncode == 0  # run again on a new connection
    assert safe.stats.reconnects == 1


def test_a_command_that_runs_too_long_times_out(make: Any) -> None:
    with pytest.raises(CommandTimeoutError, match="timed out while trying to run sleep; it may still be running"):
        make().run(["sleep", "5"], timeout=1)


# -- keepalives, on a real TCP connection (loopback) ----------------------------------------------------------------
TCP_OPTIONS = ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")


def _keepalive_options(sock: socket.socket) -> Dict[str, int]:
    out = {"SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    out.update({name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)) for name in TCP_OPTIONS})
    return out


@pytest.mark.parametrize("keepalive_s", [0, 7])
def test_keepalive_s_sets_ssh_and_tcp_keepalives_and_zero_turns_both_off(
    server_key: paramiko.PKey, tmp_path: Path, keepalive_s: float
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        t = paramiko.Transport(conn)
        t.add_server_key(server_key)
        t.start_server(server=_Server())

    threading.Thread(target=serve, daemon=True).start()
    spec = HostSpec(alias=f"tcp-loop-{os.urandom(4).hex()}", hostname="127.0.0.1", port=port, user="me",
                    known_hosts=(str(tmp_path / "known_hosts"),), global_known_hosts=(),
                    strict_host_key_checking="accept-new", agent=False, keepalive_s=keepalive_s)
    t = SSHTransport(spec)
    try:
        assert t.run(["echo", "hi"]).stdout == "hi\n"  # the connection works either way
        ssh = t.conn.transport()
        got = _keepalive_options(ssh.sock)  # type: ignore[arg-type]
        # paramiko keeps the SSH keepalive interval in its packetizer (0: none sent)
        ssh_interval = ssh.packetizer._Packetizer__keepalive_interval  # type: ignore[attr-defined]
    finally:
        t.close()
    if keepalive_s:
        assert ssh_interval == 7
        assert got == {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 7, "TCP_KEEPINTVL": 7, "TCP_KEEPCNT": 3,
                       "TCP_USER_TIMEOUT": 28_000}
    else:
        assert ssh_interval == 0
        with socket.socket() as fresh:  # nothing set: the kernel's defaults, keepalives off
            assert got == {**_keepalive_options(fresh), "SO_KEEPALIVE": 0}
        assert got["TCP_USER_TIMEOUT"] == 0
