"""Site-config keys that a site cannot use are refused when the site is loaded, with what to do: by `hpcbridge sites
check` (exit 2) and by `load_site` / `Executor` (ConfigError), before anything is written or submitted. Also the names
a site may have, and the flavours each scheduler takes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import hpcbridge.sites.loading as loading
from hpcbridge import Executor
from hpcbridge.errors import ConfigError, UnknownSiteError
from hpcbridge.schedulers import SCHEDULERS, scheduler_class
from hpcbridge.sites.loading import load_site, load_site_file
from hpcbridge.sites.schema import SCHEMA

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Empty system, user and project layers under tmp_path, no packages; cwd is the project."""
    d = {k: tmp_path / k for k in ("system", "xdg", "project")}
    for p in d.values():
        p.mkdir()
    d["user"] = d["xdg"] / "hpcbridge" / "sites"
    d["user"].mkdir(parents=True)
    monkeypatch.setattr(loading, "SYSTEM_DIR", str(d["system"]))
    monkeypatch.setattr(loading, "package_dirs", lambda: [])
    monkeypatch.setenv("HPCBRIDGE_SITES_PATH", "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(d["xdg"]))
    monkeypatch.delenv("HPCBRIDGE_SITE", raising=False)
    monkeypatch.chdir(d["project"])
    d["jobs"] = tmp_path / "jobs"
    return d


def write(path, text):
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def sites_check(*files):
    """``hpcbridge sites check FILE...`` in a new process: (exit code, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": REPO}
    p = subprocess.run([sys.executable, "-m", "hpcbridge.cli", "sites", "check", *files], capture_output=True,
                       text=True, env=env, timeout=120)
    return p.returncode, p.stdout, p.stderr


# -- keys the site would not use: refused -----------------------------------------------------------------------
SSH_UNUSED = ("[ssh] sets host, keepalive_s, but transport = 'local' (built-in default) runs every command on this "
              "machine and would not use them; set transport = \"ssh\" to reach the cluster over SSH, or remove the "
              "[ssh] table")
PORTS = ("need 1024 <= master_port_min <= master_port_max <= 65535; set both ends of the range of ports the launch "
         "step may use on a job's first node, e.g. master_port_min = 29400 and master_port_max = 29999")
REFUSED = [
    # (file name, text, line of the message, the message after "FILE:LINE: ")
    ("flavour-on-slurm", 'scheduler = "slurm"\nflavour = "torque"\n', 2,
     "flavour = 'torque' means nothing to scheduler = 'slurm' ({path}:1), which has no flavours (flavours are for "
     "pbs: pbspro, torque); remove the flavour line, or set the scheduler it was meant for"),
    ("flavour-on-local", 'scheduler = "local"\nflavour = "pbspro"\n', 2,
     "flavour = 'pbspro' means nothing to scheduler = 'local' ({path}:1), which has no flavours (flavours are for "
     "pbs: pbspro, torque); remove the flavour line, or set the scheduler it was meant for"),
    ("ports-reversed", 'scheduler = "slurm"\n[distributed]\nmaster_port_min = 30000\nmaster_port_max = 29000\n', 3,
     f"[distributed] master_port_min = 30000, master_port_max = 29000: {PORTS}"),
    ("ports-above-the-default-max", 'scheduler = "slurm"\n[distributed]\nmaster_port_min = 40000\n', 3,
     f"[distributed] master_port_min = 40000, master_port_max = 32767 (the default): {PORTS}"),
    ("ports-beyond-65535", 'scheduler = "slurm"\n[distributed]\nmaster_port_max = 70000\n', 3,
     f"[distributed] master_port_min = 20000 (the default), master_port_max = 70000: {PORTS}"),
    ("no-connect-timeout", 'transport = "ssh"\n[ssh]\nhost = "login"\nconnect_timeout_s = 0\n', 4,
     "ssh.connect_timeout_s: must be more than 0 seconds, got 0"),
    ("ssh-without-ssh", 'scheduler = "slurm"\n[ssh]\nhost = "login"\nkeepalive_s = 0\n', 3, SSH_UNUSED),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_key_the_site_would_not_use_is_refused_at_load_before_anything_is_written(dirs, name, text, line, message):
    path = write(dirs["system"] / f"{name}.toml", text)
    expected = f"{path}:{line}: {message.format(path=path)}"
    with pytest.raises(ConfigError) as info:
        load_site(name)
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info:
        Executor(site=name, folder=str(dirs["jobs"]))
    assert str(info.value) == expected
    assert not dirs["jobs"].exists()


def test_sites_check_fails_on_each_with_its_message_and_passes_what_a_site_can_use(tmp_path):
    files = []
    for name, text, line, message in REFUSED:
        path = write(tmp_path / f"{name}.toml", text)
        files.append((path, f"hpcbridge: error: {path}:{line}: {message.format(path=path)}"))
    good = write(tmp_path / "torque.toml", 'scheduler = "pbs"\nflavour = "torque"\naccounting = false\n'
                                           '[distributed]\nmaster_port_min = 29400\nmaster_port_max = 29400\n')
    code, out, err = sites_check(good, *(p for p, _ in files))
    assert code == 2
    assert out == f"ok\t{good}\tpbs/torque, transport local, 1 layer(s)\n"
    errors = [x for x in err.splitlines() if x.startswith("hpcbridge: error: ")]
    assert errors == [e for _, e in files]


def test_a_user_file_cannot_give_the_built_in_local_site_a_flavour(dirs):
    path = write(dirs["user"] / "local.toml", 'flavour = "torque"\n')
    with pytest.raises(ConfigError) as info:
        Executor(site="local", folder=str(dirs["jobs"]))
    assert str(info.value) == (
        f"{path}:1: flavour = 'torque' means nothing to scheduler = 'local' (built-in), which has no flavours "
        "(flavours are for pbs: pbspro, torque); remove the flavour line, or set the scheduler it was meant for"
    )
    assert not dirs["jobs"].exists()


def test_the_ssh_table_is_refused_wherever_transport_local_comes_from(dirs):
    write(dirs["system"] / "hpc.toml", 'scheduler = "slurm"\ntransport = "ssh"\n[ssh]\nhost = "login"\n')
    user = write(dirs["user"] / "hpc.toml", 'transport = "local"\n')
    assert load_site("hpc", transport="ssh").transport == "ssh"
    with pytest.raises(ConfigError, match=rf"^{dirs['system']}/hpc.toml:4: \[ssh\] sets host, but transport = "
                                          rf"'local' \({user}:1\) runs every command on this machine"):
        load_site("hpc")


def test_each_scheduler_takes_its_own_flavours_and_the_schema_offers_exactly_those():
    assert {name: scheduler_class(name).flavours for name in SCHEDULERS} == {
        "slurm": (), "pbs": ("pbspro", "torque"), "local": (),
    }
    offered = {f for name in SCHEDULERS for f in scheduler_class(name).flavours}
    assert set(SCHEMA["flavour"].choices) == {""} | offered


# -- site names ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "problem"), [
    ("my site", "site name 'my site' is not valid: a site name holds letters, digits and . _ - and starts with a "
                "letter or digit (it names the file NAME.toml), e.g. 'my-site'"),
    ("../x", "site name '../x' is not valid: a site name holds letters, digits and . _ - and starts with a letter "
             "or digit (it names the file NAME.toml), e.g. 'x'"),
    ("..", "site name '..' is not valid: a site name holds letters, digits and . _ - and starts with a letter or "
           "digit (it names the file NAME.toml)"),
    (".hidden", "site name '.hidden' is not valid: a site name holds letters, digits and . _ - and starts with a "
                "letter or digit (it names the file NAME.toml), e.g. 'hidden'"),
])
def test_a_site_name_with_bad_characters_is_refused_before_any_file_is_read(dirs, name, problem):
    (dirs["system"] / "x.toml").write_text('scheduler = "slurm"\n')  # what "../x" would reach from a folder below
    with pytest.raises(UnknownSiteError) as info:
        load_site(name)
    assert str(info.value) == problem
    with pytest.raises(UnknownSiteError) as info:
        Executor(site=name, folder=str(dirs["jobs"]))
    assert str(info.value) == problem
    assert not dirs["jobs"].exists()


def test_a_misnamed_site_file_or_project_table_is_reported_by_sites_check(dirs, tmp_path):
    bad_file = write(dirs["system"] / "my cluster.toml", 'scheduler = "slurm"\n')
    write(dirs["system"] / "ok-1.toml", 'scheduler = "slurm"\n')
    problem = ("site name 'my cluster' is not valid: a site name holds letters, digits and . _ - and starts with a "
               "letter or digit (it names the file NAME.toml), e.g. 'my-cluster'")
    assert loading.misnamed_site_files() == [f"{bad_file}: {problem}; rename the file"]
    assert "ok-1" in loading.site_names() and "my cluster" not in loading.site_names()
    with pytest.raises(ConfigError) as info:
        load_site_file(bad_file)  # `hpcbridge sites check FILE`: the file name is the site's name
    assert str(info.value) == f"{bad_file}: {problem}; rename the file"
    # the whole search, as `hpcbridge sites check` (no FILE) runs it
    env = {**os.environ, "PYTHONPATH": REPO, "HPCBRIDGE_SITES_PATH": str(dirs["system"]),
           "XDG_CONFIG_HOME": str(dirs["xdg"])}
    p = subprocess.run([sys.executable, "-m", "hpcbridge.cli", "sites", "check"], capture_output=True, text=True,
                       env=env, cwd=str(dirs["project"]), timeout=120)
    assert p.returncode == 2
    assert f"hpcbridge: error: {bad_file}: {problem}; rename the file" in p.stderr.splitlines()
    assert any(line.startswith("ok\tok-1\t") for line in p.stdout.splitlines())
    # a project file's [sites.NAME] table names a site too
    project = write(dirs["project"] / "hpcbridge.toml", '[sites."my cluster"]\nscheduler = "slurm"\n')
    with pytest.raises(ConfigError) as info:
        load_site("ok-1")
    assert str(info.value) == f"{project}:1: [sites.my cluster]: {problem}"


# -- an SSH endpoint that hpcbridge cannot reach as ~/.ssh/config says ----------------------------------------------
def test_a_proxy_command_fails_sites_check_and_the_executor_before_anything_is_connected(dirs, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host behind\n    HostName 10.0.0.20\n    User alice\n    ProxyCommand ssh -W %h:%p gw\n")
    text = f'scheduler = "slurm"\ntransport = "ssh"\n[ssh]\nhost = "behind"\nconfig_file = "{config}"\n'
    path = write(dirs["system"] / "behind.toml", text)
    expected = (
        f"{config} reaches behind through ProxyCommand 'ssh -W 10.0.0.20:22 gw', which hpcbridge does not run (it "
        "connects with paramiko and runs no local shell commands, docs/ssh.md); reach it through a bastion instead: "
        f"ProxyJump in {config}, or proxy_jump = \"[user@]bastion[:port]\" in the site's [ssh] table (which "
        "overrides ProxyCommand, as ssh -J does)"
    )
    with pytest.raises(ConfigError) as info:
        Executor(site="behind", folder=str(dirs["jobs"]))
    assert str(info.value) == expected
    assert not dirs["jobs"].exists()
    code, out, err = sites_check(path)
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == f"hpcbridge: error: {expected}"
    # with a bastion instead, the check shows where it would connect
    write(dirs["system"] / "behind.toml", text + 'proxy_jump = "alice@gw.example.org"\n')
    code, out, err = sites_check(path)
    assert (code, err) == (0, "")
    assert out == (f"ok\t{path}\tslurm, transport ssh to behind (alice@10.0.0.20:22 via gw.example.org), "
                   "1 layer(s)\n")
