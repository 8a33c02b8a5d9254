"""Opening channels on the shared SSH connection: a refusal is retried, a drop is not (pure logic: paramiko's
Transport replaced by a scripted one)."""

from __future__ import annotations

import types

import paramiko
import pytest

import hpcbridge.transport.ssh as ssh
from hpcbridge.errors import TransportError


class ScriptedTransport:
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
    t = ScriptedTransport([paramiko.ChannelException(2, "Connect failed"),
                           paramiko.SSHException("Unable to open channel.")])
    assert connection()._open_session(t) == "channel" and t.opened == 3


def test_a_failure_on_a_connection_that_went_away_is_a_drop():
    t = ScriptedTransport([paramiko.SSHException("Unable to open channel.")], active=False)
    with pytest.raises(paramiko.SSHException, match="^Unable to open channel.$"):
        connection()._open_session(t)
    assert t.opened == 1


def test_refused_every_time_says_what_to_check():
    t = ScriptedTransport([paramiko.ChannelException(1, "Administratively prohibited")] * 4)
    with pytest.raises(TransportError, match=r"^alice@login:22 refused a new SSH channel \(.*\); the server's "
                                             r"MaxSessions may be below 10$"):
        connection()._open_session(t)
    assert t.opened == 4
