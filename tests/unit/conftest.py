"""Fixtures for the golden-script tests (test_render.py, test_pbs_render.py, test_launchers.py) and for running a
command on a terminal (test_cli.py, test_cli_display.py)."""

import os
import pty
import re
import subprocess

import pytest

import hpcbridge.executor as executor_mod

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
TAG = "0123456789abcdef"


@pytest.fixture
def fixed(monkeypatch):
    """Rendered scripts do not depend on the run: a fixed job tag, and "/" as the client's directory."""
    monkeypatch.setattr(executor_mod, "_new_tag", lambda: TAG)
    monkeypatch.chdir("/")


@pytest.fixture
def golden():
    """``golden(name, text)``: text must equal tests/unit/golden/NAME (HPCBRIDGE_UPDATE_GOLDEN=1 rewrites it).

    Under CI (``CI=true``) the switch is refused: the test fails, and nothing is rewritten, so a golden test there
    can always fail."""

    def check(name, text):
        path = os.path.join(GOLDEN, name)
        if os.environ.get("HPCBRIDGE_UPDATE_GOLDEN"):
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"HPCBRIDGE_UPDATE_GOLDEN is refused under CI (CI=true): with it every golden test would "
                            f"pass by rewriting its file ({name}); update golden files outside CI, review and commit "
                            "them, and unset HPCBRIDGE_UPDATE_GOLDEN here", pytrace=False)
            with open(path, "w") as fh:
                fh.write(text)
        with open(path) as fh:
            assert text == fh.read(), f"{name} changed; rerun with HPCBRIDGE_UPDATE_GOLDEN=1 if intended"

    return check


@pytest.fixture
def on_pty():
    """``on_pty(argv, which="stdout", **run_kwargs) -> (CompletedProcess, text)``: run ``argv`` with its stdout or
    stderr on a pseudo-terminal (so it sees a TTY); ``text`` is what it wrote there, without ANSI escapes."""

    def run(argv, which="stdout", **kwargs):
        controller, terminal = pty.openpty()
        try:
            p = subprocess.run(argv, **{which: terminal}, **kwargs)
        finally:
            os.close(terminal)
        data = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            data += chunk
        os.close(controller)
        return p, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", data.decode(errors="replace"))

    return run
