"""The transport factory: the transport a site names, its SSH endpoint resolved from the site's ``[ssh]`` table
(nothing is connected), and paramiko imported only for an SSH site."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcbridge.errors import ConfigError
from hpcbridge.schedulers.slurm import SlurmScheduler
from hpcbridge.sites import Site
from hpcbridge.transport import make_transport
from hpcbridge.transport.local import LocalTransport
from hpcbridge.transport.ssh import SAFE_COMMANDS, SSHTransport, host_spec


def _ssh_site(tmp_path: Path) -> Site:
    config = tmp_path / "ssh_config"
    config.write_text("Host hpc\n    HostName 10.1.2.3\n    User alice\n    Port 2222\n")
    return Site(name="hpc", transport="ssh", ssh={"host": "hpc", "config_file": str(config), "connect_timeout_s": 4})


def test_an_ssh_site_gets_an_ssh_transport_with_its_endpoint_resolved(tmp_path: Path) -> None:
    site = _ssh_site(tmp_path)
    t = make_transport(site)
    try:
        assert isinstance(t, SSHTransport)
        assert t.spec == host_spec(site.ssh, site_name="hpc")
        assert (t.spec.hostname, t.spec.user, t.spec.port, t.spec.connect_timeout_s) == ("10.1.2.3", "alice", 2222, 4.0)
        assert t.safe_commands == SAFE_COMMANDS | SlurmScheduler.safe_commands  # generic reads + the scheduler's
        assert t.stats.connects == 0  # connecting waits for the first command
    finally:
        t.close()


def test_the_commands_safe_to_retry_can_be_given(tmp_path: Path) -> None:
    t = make_transport(_ssh_site(tmp_path), safe_commands={"bjobs", "bhist"})
    try:
        assert isinstance(t, SSHTransport) and t.safe_commands == frozenset({"bjobs", "bhist"})
    finally:
        t.close()


def test_a_local_site_gets_the_local_transport_and_an_unknown_one_is_a_config_error() -> None:
    assert isinstance(make_transport(Site(name="here", transport="local")), LocalTransport)
    with pytest.raises(ConfigError, match="site 'x': unknown transport 'telnet'"):
        make_transport(Site(name="x", transport="telnet"))


def test_without_paramiko_an_ssh_site_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hpcbridge.transport.ssh", None)  # as if paramiko were missing
    with pytest.raises(ConfigError, match=r"site 'hpc': the ssh transport is not available \(.*\); install it with: "
                                          r"pip install 'hpcbridge\[ssh\]' \(or pip install paramiko\)$"):
        make_transport(_ssh_site(tmp_path))


def test_the_transport_package_and_the_local_transport_do_not_import_paramiko() -> None:
    code = "import sys, hpcbridge.transport.local; print(sorted(m for m in sys.modules if m.startswith('paramiko')))"
    root = Path(__file__).resolve().parents[2]  # this checkout's hpcbridge
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
