"""Which site `hpcbridge submit` uses, live: the project file `hpcbridge.toml` (its own sites, its tables over an
installed one, `default_site`), `$HPCBRIDGE_SITE` over it, `--site` over both; and a site-config shipped as a
pip-installed package's `hpcbridge.sites` entry point. Each chosen site runs a job on the cluster, and sacct shows
the settings that site gave it.

Run as alice (see docs/testcluster.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import pytest

if TYPE_CHECKING:
    from conftest import LiveCluster  # tests/live/conftest.py

REPO = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2", "node3")
PYTHON = "/opt/hpcbridge-test/venv/bin/python"  # the cluster-side python of the sites below


@pytest.fixture
def hpcbridge(cluster: LiveCluster, cluster_workdir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``hpcbridge(*args, cwd=, env=, python=, rc=0)``: the command, as a user runs it, with a private user config and
    no ``$HPCBRIDGE_SITE`` unless ``env`` gives one. Every job it submitted is cancelled at the end (from the folder
    it was submitted in: a project's sites are known only there)."""
    base = {k: v for k, v in os.environ.items() if k != "HPCBRIDGE_SITE"}
    base["XDG_CONFIG_HOME"] = str(cluster_workdir / "xdg")  # no user layer
    base["PYTHONPATH"] = str(REPO)
    used: Dict[str, str] = {}

    def run(*args: str, cwd: Path, env: Optional[Dict[str, str]] = None, python: str = sys.executable,
            rc: Optional[int] = 0, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        argv = [python, "-m", "hpcbridge.cli", *args]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, cwd=str(cwd), env={**base, **(env or {})},
                               timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"hpcbridge {list(args)} did not finish in {timeout} s: {exc.stdout!r} {exc.stderr!r}")
        used[str(cwd)] = python
        if rc is not None:
            assert p.returncode == rc, f"hpcbridge {list(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    yield run
    for cwd, python in used.items():
        run("cancel", "--all", cwd=Path(cwd), python=python, rc=None, timeout=120)


def _jobs(hpcbridge: Callable[..., subprocess.CompletedProcess[str]], cwd: Path, **kw: Any) -> List[Dict[str, str]]:
    """The jobs of this test's registry, newest first: id and site."""
    rows = json.loads(hpcbridge("status", "--json", "--no-refresh", cwd=cwd, **kw).stdout)
    return [{"job_id": r["job_id"], "site": r["site"]} for r in rows]


def _scheduler_says(cluster: LiveCluster, job_id: str) -> Dict[str, str]:
    """State, name and partition of a job that just ended, as slurmctld has them (it keeps an ended job MinJobAge,
    300 s; slurmdbd fills in a new record's name and partition a moment later than its state)."""
    out = cluster.run(["squeue", "--noheader", "--states=all", "-j", job_id, "-o", "%T|%j|%P"], timeout=30).stdout
    return dict(zip(("State", "JobName", "Partition"), out.strip().split("|")))


# -- the project file, default_site and $HPCBRIDGE_SITE ---------------------------------------------------------
def test_the_project_file_and_hpcbridge_site_choose_where_submit_runs(hpcbridge, cluster, cluster_workdir):
    project = cluster_workdir / "project"
    here = project / "src" / "deep"  # the nearest hpcbridge.toml in a parent folder counts
    here.mkdir(parents=True)
    jobs = cluster_workdir / "jobs"
    projf = project / "hpcbridge.toml"
    projf.write_text(textwrap.dedent(f"""\
        default_site = "proj-short"     # the CLI's site here, unless $HPCBRIDGE_SITE or --site says otherwise

        [sites.proj-short]              # a site only this project defines
        scheduler = "slurm"
        python = "{PYTHON}"
        workdir = "{jobs}"
        poll_interval_min_s = 0.5

        [sites.proj-short.defaults]
        partition = "short"
        walltime = "00:02:00"
        mem_gb = 0.25
        name = "proj-default-site"

        [sites.testcluster]             # the installed site, tuned for this project
        workdir = "{jobs}"

        [sites.testcluster.defaults]
        name = "proj-env-site"
    """))
    rows = {r[0]: r for r in (line.split("\t") for line in hpcbridge("sites", "list", cwd=here).stdout.splitlines())}
    assert rows["proj-short"][1:4] == ["slurm", "local", "project"], rows
    assert rows["testcluster"][3] == "system+project", rows

    # no --site, no $HPCBRIDGE_SITE: the project's default_site
    p = hpcbridge("submit", "--wait", "--timeout", "300", "--", "hostname", cwd=here)
    assert p.stdout.strip() in NODES, p.stdout
    (first,) = _jobs(hpcbridge, here)
    assert first["site"] == "proj-short"
    assert _scheduler_says(cluster, first["job_id"]) == {"State": "COMPLETED", "JobName": "proj-default-site",
                                                "Partition": "short"}

    # $HPCBRIDGE_SITE wins over default_site; the project's [sites.testcluster] tables apply over /etc's
    env = {"HPCBRIDGE_SITE": "testcluster"}
    p = hpcbridge("submit", "--wait", "--timeout", "300", "--", "hostname", cwd=here, env=env)
    assert p.stdout.strip() in NODES, p.stdout
    second, _ = _jobs(hpcbridge, here)
    assert second["site"] == "testcluster"
    assert _scheduler_says(cluster, second["job_id"]) == {"State": "COMPLETED", "JobName": "proj-env-site",
                                                 "Partition": "debug"}

    # --site wins over both (the script says which site's defaults it got; nothing is submitted)
    script = hpcbridge("submit", "--site", "proj-short", "--dry-run", "--", "hostname", cwd=here, env=env).stdout
    assert "#SBATCH --partition=short" in script.splitlines() and "#SBATCH --job-name=proj-default-site" in script

    # outside the project: no default_site, so the built-in `local`, and the project's sites are unknown
    script = hpcbridge("render", "--", "hostname", cwd=cluster_workdir).stdout.splitlines()
    assert script[1] == "#LOCAL --array-size=1" and not [x for x in script if x.startswith("#SBATCH")], script
    p = hpcbridge("submit", "--", "hostname", cwd=cluster_workdir, env={"HPCBRIDGE_SITE": "proj-short"}, rc=2)
    lines = p.stderr.splitlines()
    assert lines[0].startswith("hpcbridge: error: unknown site 'proj-short'; known sites: local, "), p.stderr
    assert lines[1] == ("hint: the site 'proj-short' came from $HPCBRIDGE_SITE; `hpcbridge sites list` shows the "
                        "sites this machine knows (--site picks one)"), p.stderr
    # a default_site naming no site: the hint names the project file
    other = cluster_workdir / "other"
    other.mkdir()
    (other / "hpcbridge.toml").write_text('default_site = "proj-shrot"\n')
    p = hpcbridge("submit", "--", "hostname", cwd=other, rc=2)
    assert p.stderr.splitlines()[1] == (
        f"hint: the site 'proj-shrot' came from default_site in {other / 'hpcbridge.toml'}; `hpcbridge sites list` "
        "shows the sites this machine knows (--site picks one)"), p.stderr
    assert _jobs(hpcbridge, here) == [second, first]  # nothing else was submitted
    assert len(os.listdir(jobs)) == 2  # the two jobs' folders: none for the dry run or the refused ones


# -- a site-config shipped as a package ---------------------------------------------------------------------------
PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "mycentre-hpcbridge"
version = "1.0"

[project.entry-points."hpcbridge.sites"]
mycentre = "mycentre_hpcbridge"                  # a package: its folder's *.toml files are site-configs
mycentre-extra = "mycentre_hpcbridge:sites_dir"  # a callable returning a folder

[tool.setuptools.package-data]
mycentre_hpcbridge = ["*.toml", "extra/*.toml"]
"""


def _venv_over_the_test_venv(folder: Path) -> Path:
    """A throwaway virtualenv that sees every package of the test venv (this python's), so that a package installed
    into it leaves the shared test venv as it was. (``--system-site-packages`` would not do: a venv made from a
    venv's python takes the base interpreter's site-packages, not the venv's.)"""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    parent = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)][0]
    (child,) = (folder / "lib").glob("python3*/site-packages")
    (child / "_hpcbridge_test_venv.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return folder / "bin" / "python"


def test_a_site_config_from_an_installed_package_is_listed_with_its_origin_and_runs_jobs(
    hpcbridge, cluster, cluster_workdir, tmp_path
):
    src = tmp_path / "mycentre-hpcbridge"
    (src / "mycentre_hpcbridge" / "extra").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "mycentre_hpcbridge" / "__init__.py").write_text(textwrap.dedent('''\
        """Site-configs of My Centre for hpcbridge."""
        import os


        def sites_dir():
            return os.path.join(os.path.dirname(__file__), "extra")
    '''))
    (src / "mycentre_hpcbridge" / "mycentre.toml").write_text(textwrap.dedent(f"""\
        description = "My Centre's cluster (from the package)"
        scheduler = "slurm"
        python = "{PYTHON}"
        workdir = "{cluster_workdir / 'jobs'}"
        poll_interval_min_s = 0.5

        [defaults]
        partition = "short"
        walltime = "00:02:00"
        mem_gb = 0.25
        name = "from-the-package"
    """))
    (src / "mycentre_hpcbridge" / "extra" / "mycentre-debug.toml").write_text(
        f'description = "the debug queue (from a callable entry point)"\nscheduler = "slurm"\npython = "{PYTHON}"\n')
    python = _venv_over_the_test_venv(tmp_path / "venv")
    p = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-index", "--no-deps",
                        "--no-cache-dir", str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    installed = subprocess.run([str(python), "-c", "import mycentre_hpcbridge as m, os; print(os.path.dirname("
                                "m.__file__))"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert installed.startswith(str(tmp_path / "venv" / "lib")), installed

    rows = {r[0]: r for r in (line.split("\t") for line in
                              hpcbridge("sites", "list", cwd=cluster_workdir, python=str(python)).stdout.splitlines())}
    assert rows["mycentre"][1:] == ["slurm", "local", "package", "My Centre's cluster (from the package)"], rows
    assert rows["mycentre-debug"][1:] == ["slurm", "local", "package", "the debug queue (from a callable entry "
                                          "point)"], rows
    shown = hpcbridge("sites", "show", "mycentre", "--origin", cwd=cluster_workdir, python=str(python)).stdout
    line = (src / "mycentre_hpcbridge" / "mycentre.toml").read_text().splitlines().index('partition = "short"') + 1
    origin = f"{installed}/mycentre.toml:{line} (package mycentre-hpcbridge 1.0)"
    assert re.search(rf'^partition = "short" +# {re.escape(origin)}$', shown, re.M), shown
    assert f"#   1. {installed}/mycentre.toml (package mycentre-hpcbridge 1.0)" in shown.splitlines()

    p = hpcbridge("submit", "--site", "mycentre", "--wait", "--timeout", "300", "--", "hostname",
                  cwd=cluster_workdir, python=str(python))
    assert p.stdout.strip() in NODES, p.stdout
    (job,) = _jobs(hpcbridge, cluster_workdir, python=str(python))
    assert job["site"] == "mycentre"
    assert _scheduler_says(cluster, job["job_id"]) == {"State": "COMPLETED", "JobName": "from-the-package",
                                              "Partition": "short"}
    # the shared test venv is untouched: it knows no such site
    names = [line.split("\t")[0] for line in hpcbridge("sites", "list", cwd=cluster_workdir).stdout.splitlines()]
    assert "mycentre" not in names and "mycentre-debug" not in names
