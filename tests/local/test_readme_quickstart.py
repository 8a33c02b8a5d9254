"""The README's quickstart, exactly as written there, in a fresh copy of the checkout: a new virtualenv, a real
(non-editable) `pip install .`, then examples/quickstart.py on the built-in local site. Slow (~30 s: pip builds
and installs hpcbridge and its dependencies)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def readme_quickstart_command():
    """The command in the README's quickstart block (so the test and the README cannot drift apart)."""
    text = (REPO / "README.md").read_text()
    section = text.split("**Quickstart**", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no ```bash block after **Quickstart** in README.md"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, f"the quickstart must be one command, found {lines}"
    return lines[0]


def copy_checkout(dest):
    def ignore(folder, names):
        return [n for n in names if n in SKIP or n.endswith(".egg-info")]

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


def test_the_readme_quickstart_command_runs_the_quickstart(tmp_path):
    command = readme_quickstart_command()
    assert command.startswith("python3 -m venv .venv && ")  # what works on an externally-managed Python
    checkout = tmp_path / "hpcbridge"
    copy_checkout(checkout)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["HPCBRIDGE_HOME"] = str(tmp_path / "hpcbridge-home")  # the registry of this run only
    p = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    out = p.stdout
    # pip installed a real copy of the package (templates included) into the new venv
    assert list((checkout / ".venv").glob("lib/python3*/site-packages/hpcbridge/templates/slurm.sh.j2"))
    assert re.search(r"^submitted job \S+ to site 'local'; waiting \.\.\.$", out, re.M), out
    pi = [float(v) for v in re.findall(r"pi ~ (\d\.\d{4})$", out, re.M)]
    assert len(pi) == 2 and all(3.1 < v < 3.2 for v in pi), out
    assert re.search(r"^8 array tasks: mean pi ~ ", out, re.M), out
    assert ("a failure inside the job comes back as itself: ValueError: invalid literal for int() with base 10: "
            "'not a number'") in out
    assert "the batch script of the first job:\n#!/bin/bash\n" in out and "hpcbridge.worker" in out
