"""Host keys: known, unknown, changed, accept-new and hashed known_hosts entries. No network."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import paramiko
import pytest

from hpcbridge.errors import HostKeyChangedError, UnknownHostKeyError
from hpcbridge.transport.ssh import config as cfg
from hpcbridge.transport.ssh import hostkeys


@pytest.fixture(scope="module")
def keys() -> Dict[str, paramiko.PKey]:
    return {"server": paramiko.RSAKey.generate(1024), "other": paramiko.RSAKey.generate(1024)}


def _spec(tmp_path: Path, strict: str = "yes", port: int = 22) -> cfg.HostSpec:
    return cfg.HostSpec(alias="hpc", hostname="10.1.2.3", user="alice", port=port,
                        known_hosts=(str(tmp_path / "known_hosts"),), global_known_hosts=(),
                        strict_host_key_checking=strict)


def _known(spec: cfg.HostSpec, lines: str) -> hostkeys.KnownHosts:
    Path(spec.known_hosts[0]).write_text(lines)
    return hostkeys.load_known_hosts(spec)


def test_known_host_key_passes(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path)
    known = _known(spec, f"10.1.2.3 ssh-rsa {keys['server'].get_base64()}\n")
    hostkeys.check_host_key(spec, keys["server"], known)  # no error


def test_unknown_host_key_is_refused_with_fingerprint_and_fix(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path, port=2222)
    known = _known(spec, f"10.1.2.3 ssh-rsa {keys['server'].get_base64()}\n")  # port 22 only: not this host
    with pytest.raises(UnknownHostKeyError) as err:
        hostkeys.check_host_key(spec, keys["server"], known)
    fp = keys["server"].fingerprint
    assert str(err.value) == (
        f"host key of hpc (alice@10.1.2.3:2222) is not known (ssh-rsa {fp}; looked in {spec.known_hosts[0]}); "
        f"check that fingerprint with the cluster's admins, then trust it with: "
        f"ssh-keyscan -t rsa -p 2222 10.1.2.3 >> {spec.known_hosts[0]}"
    )


def test_changed_host_key_is_refused_loudly(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path, strict="no")  # even with StrictHostKeyChecking no
    known = _known(spec, f"10.1.2.3 ssh-rsa {keys['other'].get_base64()}\n")
    with pytest.raises(HostKeyChangedError) as err:
        hostkeys.check_host_key(spec, keys["server"], known)
    text = str(err.value)
    assert text.startswith("WARNING: HOST KEY OF hpc (alice@10.1.2.3:22) HAS CHANGED: it now sends ssh-rsa ")
    assert keys["server"].fingerprint in text and keys["other"].fingerprint in text
    assert f"ssh-keygen -R 10.1.2.3 -f {spec.known_hosts[0]}" in text and "\n" not in text


def test_accept_new_adds_an_unknown_key(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path, strict="accept-new")
    known = _known(spec, "")
    hostkeys.check_host_key(spec, keys["server"], known)
    assert Path(spec.known_hosts[0]).read_text() == f"10.1.2.3 ssh-rsa {keys['server'].get_base64()}\n"
    hostkeys.check_host_key(spec, keys["server"], hostkeys.load_known_hosts(spec))  # now known


def test_hashed_known_hosts_entries_are_understood(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path)
    hashed = paramiko.HostKeys.hash_host("10.1.2.3")
    hostkeys.check_host_key(spec, keys["server"], _known(spec, f"{hashed} ssh-rsa {keys['server'].get_base64()}\n"))
