"""``Executor()`` and ``attach()`` without ``site=`` use the CLI's default site: ``$HPCBRIDGE_SITE``, else the
project file's ``default_site``, else ``local`` (a notebook server started by batchspawner sets HPCBRIDGE_SITE)."""

import os
import textwrap

import pytest

from hpcbridge import Executor, attach
from hpcbridge.errors import JobNotFoundError
from hpcbridge.sites import loading


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text).lstrip("\n"))


@pytest.fixture
def sites(tmp_path, monkeypatch):
    """Two sites, "envsite" and "projsite", in an empty $HPCBRIDGE_SITES_PATH; cwd is a folder with no project file."""
    envpath = tmp_path / "envpath"
    for name in ("envsite", "projsite"):
        write(envpath / f"{name}.toml", f"""
            scheduler = "slurm"
            transport = "local"
            workdir = "{tmp_path / name}"
            [defaults]
            walltime = "00:07:00"
        """)
    monkeypatch.setattr(loading, "SYSTEM_DIR", str(tmp_path / "system"))
    monkeypatch.setenv("HPCBRIDGE_SITES_PATH", str(envpath))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(loading, "package_dirs", lambda: [])
    monkeypatch.delenv("HPCBRIDGE_SITE", raising=False)
    (tmp_path / "project" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project" / "sub")
    return tmp_path


def test_without_site_the_executor_uses_hpcbridge_site(sites, monkeypatch):
    monkeypatch.setenv("HPCBRIDGE_SITE", "envsite")
    write(sites / "project" / "hpcbridge.toml", 'default_site = "projsite"\n')  # the variable wins over it
    ex = Executor()
    assert ex.site.name == "envsite"
    assert ex.site.scheduler == "slurm"
    assert ex.resources.walltime_s == 7 * 60  # the site's defaults, not local's


def test_without_site_or_variable_the_executor_uses_the_project_files_default_site(sites):
    write(sites / "project" / "hpcbridge.toml", 'default_site = "projsite"\n')
    assert Executor().site.name == "projsite"


def test_without_site_variable_or_project_file_the_executor_is_local(sites):
    ex = Executor()
    assert ex.site.name == "local"
    assert ex.site.scheduler == "local"


def test_an_explicit_site_wins_over_the_variable(sites, monkeypatch):
    monkeypatch.setenv("HPCBRIDGE_SITE", "envsite")
    assert Executor(site="local").site.name == "local"


def test_attach_without_site_looks_in_the_default_sites_registry_rows(sites, monkeypatch):
    monkeypatch.setenv("HPCBRIDGE_SITE", "envsite")
    with pytest.raises(JobNotFoundError) as err:
        attach("4242")
    assert "no job 4242 of site 'envsite' in the registry" in str(err.value)
