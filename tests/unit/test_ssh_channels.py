"""Opening channels on the shared SSH connection: a refusal is retried, a drop is not (pure logic: paramiko's
Transport replaced by a scripted one); a command's stdout is framed off the login noise."""

from __future__ import annotations

import types

import paramiko
import pytest

import hpcbridge.transport.ssh.connection as ssh
from hpcbridge.errors import TransportError
from hpcbridge.transport.ssh import channel


class ScriptedSessions:
    """open_session raises the scripted exceptions in turn, then returns a channel."""

    def __init__(self, failures, active=True):
        self.failures = list(failures)
        self.active = active
        self.opened = 0

    def open_session(self, timeout=None):
        self.opened += 1
        if self.failures:
            raise self.failures.pop(0)
        return "channel"

    def is_active(self):
        return self.active


def connection():
    conn = ssh.Connection.__new__(ssh.Connection)
    conn.spec = types.SimpleNamespace(connect_timeout_s=5, label="alice@login:22")
    return conn


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(ssh, "CHANNEL_RETRY_WAITS_S", (0.0, 0.0, 0.0, None))


def test_a_refusal_whose_reason_another_thread_took_is_retried_not_a_drop():
    """Two refusals close together: paramiko keeps one reason per connection, the first thread to look takes it,
    the other sees a bare SSHException. On a live connection both are refusals: open again."""
    t = ScriptedSessions([paramiko.ChannelException(2, "Connect failed"),
                           paramiko.SSHException("Unable to open channel.")])
    assert connection()._open_session(t) == "channel" and t.opened == 3


def test_a_failure_on_a_connection_that_went_away_is_a_drop():
    t = ScriptedSessions([paramiko.SSHException("Unable to open channel.")], active=False)
    with pytest.raises(paramiko.SSHException, match="^Unable to open channel.$"):
        connection()._open_session(t)
    assert t.opened == 1


def test_refused_every_time_says_what_to_check():
    t = ScriptedSessions([paramiko.ChannelException(1, "Administratively prohibited")] * 4)
    with pytest.raises(TransportError, match=r"^alice@login:22 refused a new SSH channel \(.*\); the server's "
                                             r"MaxSessions may be below 10$"):
        connection()._open_session(t)
    assert t.opened == 4


def test_streamed_stdout_drops_the_noise_even_when_the_marker_is_split() -> None:
    marker = "__hpcbridge_m__"
    data = b"noise\nmore noise" + marker.encode() + b"\n" + b"payload-" * 1000
    for cut in (1, 3, 7, 64):
        got: list[bytes] = []
        out = channel._Stdout(marker, got.append)
        for i in range(0, len(data), cut):
            out.add(data[i : i + cut])
        assert b"".join(got) == b"payload-" * 1000
        assert out.result() == b""  # streamed, not kept
    kept = channel._Stdout(marker, None)
    kept.add(data)
    assert kept.result() == b"payload-" * 1000
    silent = channel._Stdout(marker, None)
    silent.add(b"only noise, the command never started\n")
    assert silent.result() is None
