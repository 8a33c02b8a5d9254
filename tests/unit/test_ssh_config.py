"""Where to connect: ~/.ssh/config resolution, ProxyJump parsing, and the one-line error messages. No network (the
live tests are tests/live/test_ssh_live.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import paramiko
import pytest

from hpcbridge.errors import ConfigError
from hpcbridge.transport.ssh import config as cfg
from hpcbridge.transport.ssh import messages

HOME = "/home/u"

CONFIG = """
Host login
    HostName login.example.org
    User alice
    Port 2222
    IdentityFile ~/.ssh/id_site
    IdentitiesOnly yes
    ProxyJump jump
    StrictHostKeyChecking accept-new
    UserKnownHostsFile ~/.ssh/kh_a ~/.ssh/kh_b
    ServerAliveInterval 7
    ConnectTimeout 4

Host jump
    HostName bastion.example.org
    User jumper
    Port 2200

Host plain
    HostName 10.0.0.9

Host nojump
    HostName 10.0.0.10
    ProxyJump none
"""


def lookup_from(text: str) -> cfg.Lookup:
    config = paramiko.SSHConfig.from_text(text)
    return lambda alias: dict(config.lookup(alias))


def resolve(ssh_table: Mapping[str, Any], text: str = CONFIG) -> cfg.HostSpec:
    return cfg.resolve(ssh_table, lookup_from(text), local_user="me", home=HOME, site_name="s")


def test_ssh_config_alias_is_resolved_like_openssh() -> None:
    spec = resolve({"host": "login"})
    assert (spec.alias, spec.hostname, spec.user, spec.port) == ("login", "login.example.org", "alice", 2222)
    assert spec.identity_files == (os.path.expanduser("~/.ssh/id_site"),)  # paramiko expands ~ in IdentityFile
    assert spec.identities_only is True
    assert spec.strict_host_key_checking == "accept-new"
    assert spec.known_hosts == ("/home/u/.ssh/kh_a", "/home/u/.ssh/kh_b")
    assert spec.global_known_hosts == cfg.DEFAULT_GLOBAL_KNOWN_HOSTS
    assert (spec.keepalive_s, spec.connect_timeout_s) == (7.0, 4.0)
    [jump] = spec.jumps
    assert (jump.alias, jump.hostname, jump.user, jump.port, jump.jumps) == (
        "jump", "bastion.example.org", "jumper", 2200, ()
    )
    assert spec.label == "login (alice@login.example.org:2222 via jump)"
    assert spec.known_hosts_name == "[login.example.org]:2222"


def test_site_keys_win_over_ssh_config() -> None:
    spec = resolve({"host": "login", "user": "bob", "port": 22, "identity_file": "~/k", "proxy_jump": "none",
                    "known_hosts": "~/kh", "connect_timeout_s": 1.5, "keepalive_s": 0})
    assert (spec.user, spec.port, spec.jumps) == ("bob", 22, ())
    # the site's key first, then the config's
    assert spec.identity_files == ("/home/u/k", os.path.expanduser("~/.ssh/id_site"))
    assert spec.known_hosts == ("/home/u/kh",)
    assert (spec.connect_timeout_s, spec.keepalive_s) == (1.5, 0.0)
    assert spec.known_hosts_name == "login.example.org"


def test_unknown_alias_defaults() -> None:
    spec = resolve({"host": "cluster.example.org"}, text="")
    assert (spec.hostname, spec.user, spec.port, spec.jumps) == ("cluster.example.org", "me", 22, ())
    assert spec.strict_host_key_checking == "yes"  # nothing is auto-accepted unless the config says so
    assert spec.known_hosts == ("/home/u/.ssh/known_hosts", "/home/u/.ssh/known_hosts2")
    assert (spec.connect_timeout_s, spec.keepalive_s) == (cfg.DEFAULT_CONNECT_TIMEOUT_S, cfg.DEFAULT_KEEPALIVE_S)


def test_proxy_jump_chain_with_users_ports_and_aliases() -> None:
    spec = resolve({"host": "plain", "proxy_jump": "ops@jump:2201,ssh://root@[fe80::1]:2022,gw"})
    hops = [(j.alias, j.hostname, j.user, j.port) for j in spec.jumps]
    assert hops == [
        ("jump", "bastion.example.org", "ops", 2201),  # the hop's own config applies, the hop's words win
        ("fe80::1", "fe80::1", "root", 2022),
        ("gw", "gw", "me", 22),
    ]
    assert resolve({"host": "nojump"}).jumps == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [("a:notaport", "is not a port number"), ("@host", r"each hop is \[user@\]host"), ("a:70000", "port")],
)
def test_bad_proxy_jump_is_a_config_error(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        cfg.parse_jump(text)


def test_proxy_jump_loop_is_refused() -> None:
    text = "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n"
    spec = resolve({"host": "a"}, text)  # a hop's own ProxyJump is not followed (as ssh -J): no loop
    assert [j.alias for j in spec.jumps] == ["b"]
    with pytest.raises(ConfigError, match="ProxyJump loop"):
        resolve({"host": "a", "proxy_jump": "a"}, text)


def test_no_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"needs \[ssh\] host"):
        resolve({})


def test_config_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.config_lookup(str(tmp_path / "nope"), HOME)
    assert cfg.config_lookup(None, str(tmp_path))("anything") == {}  # no ~/.ssh/config at all is fine


# -- messages -------------------------------------------------------------------------------------------------
def test_jump_host_hint_uses_ssh_with_accept_new(tmp_path: Path) -> None:
    jump = cfg.HostSpec(alias="gw", hostname="gw.example.org", user="ops", port=2200)
    spec = cfg.HostSpec(alias="hpc", hostname="10.0.0.5", user="alice", jumps=(jump,),
                        known_hosts=(str(tmp_path / "kh"),))
    assert messages.keyscan_hint(spec, "ssh-ed25519") == (
        f"ssh -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={tmp_path / 'kh'} "
        "-J ops@gw.example.org:2200 alice@10.0.0.5 true"
    )


def test_messages_are_one_line_and_say_what_to_do() -> None:
    spec = cfg.HostSpec(alias="hpc", hostname="10.1.2.3", user="alice", identity_files=("/k/id",))
    unreachable = messages.unreachable_message(spec, "Connection refused")
    assert unreachable == (
        "cannot reach hpc at 10.1.2.3:22: Connection refused; check the host name, your network or VPN, and "
        "`ssh hpc true`; a login node behind a bastion needs [ssh] proxy_jump (or ProxyJump in ~/.ssh/config)"
    )
    auth = messages.auth_message(spec, ["/k/id"], ["publickey", "keyboard-interactive"])
    assert auth == (
        "alice@10.1.2.3:22 refused the login (tried /k/id; the server allows: publickey, keyboard-interactive); "
        "put your public key in ~/.ssh/authorized_keys there (ssh-copy-id -i /k/id.pub alice@hpc), load it into "
        "ssh-agent (ssh-add /k/id), or set [ssh] user / identity_file"
    )
    assert "\n" not in unreachable + auth


# -- ProxyCommand: refused where it would carry the connection -------------------------------------------------
PROXY_COMMAND_CONFIG = """
Host behind
    HostName 10.0.0.20
    ProxyCommand ssh -W %h:%p gw.example.org

Host gwcmd
    HostName gw2.example.org
    ProxyCommand nc -X 5 -x socks.example.org:1080 %h %p

Host viajump
    HostName 10.0.0.21
    ProxyJump gwcmd

Host nocmd
    HostName 10.0.0.22
    ProxyCommand none
"""


def _proxy_message(what: str, command: str) -> str:
    return (
        f"~/.ssh/config reaches {what} through ProxyCommand {command!r}, which hpcbridge does not run (it connects "
        "with paramiko and runs no local shell commands, docs/ssh.md); reach it through a bastion instead: ProxyJump "
        "in ~/.ssh/config, or proxy_jump = \"[user@]bastion[:port]\" in the site's [ssh] table (which overrides "
        "ProxyCommand, as ssh -J does)"
    )


def test_a_proxy_command_is_refused_naming_the_host_and_what_to_use_instead() -> None:
    with pytest.raises(ConfigError) as info:
        resolve({"host": "behind"}, PROXY_COMMAND_CONFIG)
    assert str(info.value) == _proxy_message("behind", "ssh -W 10.0.0.20:22 gw.example.org")
    # the first bastion is connected to directly: its ProxyCommand would carry the connection too
    with pytest.raises(ConfigError) as info:
        resolve({"host": "viajump"}, PROXY_COMMAND_CONFIG)
    assert str(info.value) == _proxy_message(
        "the bastion gwcmd", "nc -X 5 -x socks.example.org:1080 gw2.example.org 22"
    )


def test_a_proxy_command_that_would_not_be_used_is_no_error() -> None:
    # the site's proxy_jump wins over the config's ProxyCommand (as ssh -J does), proxy_jump = "none" too
    spec = resolve({"host": "behind", "proxy_jump": "plain"}, CONFIG + PROXY_COMMAND_CONFIG)
    assert (spec.hostname, [j.hostname for j in spec.jumps]) == ("10.0.0.20", ["10.0.0.9"])
    assert resolve({"host": "behind", "proxy_jump": "none"}, PROXY_COMMAND_CONFIG).jumps == ()
    # a later bastion is reached through the one before it, whatever its own ProxyCommand says
    spec = resolve({"host": "plain", "proxy_jump": "jump,gwcmd"}, CONFIG + PROXY_COMMAND_CONFIG)
    assert [j.alias for j in spec.jumps] == ["jump", "gwcmd"]
    assert resolve({"host": "nocmd"}, PROXY_COMMAND_CONFIG).jumps == ()


def test_a_zero_connect_timeout_in_ssh_config_is_the_default_not_an_instant_failure() -> None:
    # OpenSSH's ConnectTimeout 0 means "the system's TCP timeout"; a socket timeout of 0 would never connect
    spec = resolve({"host": "z"}, "Host z\n    ConnectTimeout 0\n")
    assert spec.connect_timeout_s == cfg.DEFAULT_CONNECT_TIMEOUT_S
