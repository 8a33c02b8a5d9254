"""Fixtures for the golden-script tests (test_render.py, test_pbs_render.py, test_launchers.py)."""

import os

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
    """``golden(name, text)``: text must equal tests/unit/golden/NAME (HPCBRIDGE_UPDATE_GOLDEN=1 rewrites it)."""

    def check(name, text):
        path = os.path.join(GOLDEN, name)
        if os.environ.get("HPCBRIDGE_UPDATE_GOLDEN"):
            with open(path, "w") as fh:
                fh.write(text)
        with open(path) as fh:
            assert text == fh.read(), f"{name} changed; rerun with HPCBRIDGE_UPDATE_GOLDEN=1 if intended"

    return check
