"""The golden-file update switch (``HPCBRIDGE_UPDATE_GOLDEN``, the ``golden`` fixture in conftest.py) is refused
under CI: a golden test there fails instead of rewriting its file, so it can always fail."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")  # where the golden fixture (conftest.py) keeps them
REFUSED = "HPCBRIDGE_UPDATE_GOLDEN is refused under CI (CI=true)"


def test_the_switch_is_refused_under_ci_and_nothing_is_rewritten(golden, monkeypatch):
    before = open(os.path.join(GOLDEN, "local.sh")).read()
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("HPCBRIDGE_UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception) as info:
        golden("local.sh", "not the script\n")
    assert str(info.value) == (
        f"{REFUSED}: with it every golden test would pass by rewriting its file (local.sh); update golden files "
        "outside CI, review and commit them, and unset HPCBRIDGE_UPDATE_GOLDEN here"
    )
    assert open(os.path.join(GOLDEN, "local.sh")).read() == before
    # even when the text is the file's: the switch itself is the fault
    with pytest.raises(pytest.fail.Exception, match="refused under CI"):
        golden("local.sh", before)


def test_under_ci_a_changed_text_fails_against_its_golden_file(golden, monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("HPCBRIDGE_UPDATE_GOLDEN", raising=False)
    before = open(os.path.join(GOLDEN, "local.sh")).read()
    with pytest.raises(AssertionError, match="local.sh changed"):
        golden("local.sh", before + "# one more line\n")
    golden("local.sh", before)  # the same text passes


def test_a_real_golden_test_fails_under_ci_with_the_switch_set():
    """The whole run, as CI would run it: pytest on a golden test with both variables set fails with the reason."""
    path = os.path.join(GOLDEN, "slurm_single.sh")
    before = open(path, "rb").read()
    env = {**os.environ, "CI": "true", "HPCBRIDGE_UPDATE_GOLDEN": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "test_render.py::test_slurm_single_job"],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert REFUSED in p.stdout and "1 failed" in p.stdout
    assert open(path, "rb").read() == before
