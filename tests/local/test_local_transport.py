"""The local transport's file operations, on this machine's filesystem (the SSH ones: tests/live/test_ssh_live.py)."""

import os
import signal
import time

import pytest

from hpcbridge.errors import CommandTimeoutError
from hpcbridge.transport.local import LocalTransport


def test_read_from_an_offset_and_read_tail(tmp_path):
    t = LocalTransport()
    path = tmp_path / "log.out"
    path.write_bytes(b"file 7")
    reads = [t.read_from(str(path), n) for n in (0, 5, 6, 99)]
    assert reads == [b"file 7", b"7", b"", b""]
    assert t.read_from(str(tmp_path / "none"), 0) is None
    assert t.read_tail(str(path), 2) == b" 7" and t.read_tail(str(tmp_path / "none"), 2) is None


def test_makedirs_creates_several_folders_and_their_parents_private(tmp_path):
    t = LocalTransport()
    root = tmp_path / "a" / "b"
    t.makedirs(str(root), str(root / "log"), str(root / "res"), mode=0o700)
    t.makedirs(str(root / "log"), mode=0o700)  # already there: fine
    for d in ("a", "a/b", "a/b/log", "a/b/res"):
        assert os.stat(tmp_path / d).st_mode & 0o777 == 0o700, d
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        t.makedirs(str(tmp_path / "file"))


def test_a_command_that_outlives_its_timeout_may_have_run(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(CommandTimeoutError, match=r"command timed out after 0.5 s \(it was killed, with what it had "
                                                  r"started\): sh -c") as info:
        LocalTransport().run(["sh", "-c", f"touch {marker}; exec sleep 30"], timeout=0.5)
    assert info.value.maybe_ran is True and marker.exists()


def test_a_timeout_or_ctrl_c_kills_what_the_command_started_too(tmp_path):
    """A wrapper (SUBMIT_ONCE's /bin/sh) that times out must not leave its child (sbatch) running untracked: the
    whole process group goes. Ctrl-C here does the same (the command's group no longer gets the terminal's SIGINT).
    What detached itself into its own session (the local site's job runner) lives on."""
    late, detached = tmp_path / "late", tmp_path / "detached"
    script = f"(sleep 1.5; touch {late}) & setsid sh -c 'sleep 1.5; touch {detached}' & sleep 30"
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError):
        LocalTransport().run(["sh", "-c", script], timeout=0.5)
    assert time.monotonic() - started < 5
    time.sleep(2.5)
    assert not late.exists() and detached.exists()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            LocalTransport().run(["sh", "-c", f"(sleep 1.5; touch {late}) & sleep 30"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(2.5)
    assert not late.exists()
