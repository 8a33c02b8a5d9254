"""Pure parts of the SSH transport: ~/.ssh/config resolution, ProxyJump parsing, command lines and their quoting,
output framing, host-key decisions and the error messages. No network (the live tests are tests/live/test_ssh_live.py).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Mapping

import paramiko
import pytest

from hpcbridge.errors import ConfigError, HostKeyChangedError, UnknownHostKeyError
from hpcbridge.transport import _sshconfig as cfg
from hpcbridge.transport import ssh

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


# -- command lines ----------------------------------------------------------------------------------------------
NASTY = ["a b", "it's", '"q"', "$HOME", "`id`", "; rm -rf /", "\\n", "*", "~", "", "tab\there", "new\nline", "ünï"]


def _run_local(line: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """What a login shell does with the command line: parse it once (here: bash -c)."""
    return subprocess.run(["bash", "-c", line], input=stdin, capture_output=True, check=False, timeout=30)


def test_every_argument_reaches_the_command_exactly_as_given() -> None:
    marker = "__hpcbridge_test__"
    argv = ["printf", "%s\\0", *NASTY]
    line = cfg.command_line(cfg.RUN_SCRIPT, cfg.run_args(argv, None, None), marker)
    p = _run_local(line)
    assert p.returncode == 0, p.stderr
    out = cfg.after_marker(p.stdout, marker)
    assert out is not None
    assert out.decode().split("\0")[:-1] == NASTY
    assert cfg.after_marker(p.stderr, marker) == b""


def test_env_and_cwd(tmp_path: Path) -> None:
    marker = "__m__"
    line = cfg.command_line(
        cfg.RUN_SCRIPT, cfg.run_args(["sh", "-c", 'pwd; printf "%s" "$X"'], {"X": "it's $x"}, str(tmp_path)), marker
    )
    out = cfg.after_marker(_run_local(line).stdout, marker)
    assert out == f"{tmp_path}\nit's $x".encode()
    with pytest.raises(ValueError, match="letters, digits and _"):
        cfg.run_args(["true"], {"BAD-NAME": "1"}, None)
    with pytest.raises(ValueError, match="may not contain '='"):
        cfg.run_args(["A=1"], {"X": "1"}, None)
    with pytest.raises(ValueError, match="empty command"):
        cfg.run_args([], None, None)


def test_missing_command_and_bad_cwd_are_recognisable() -> None:
    p = _run_local(cfg.command_line(cfg.RUN_SCRIPT, cfg.run_args(["no-such-cmd-xyz"], None, None), "__m__"))
    assert p.returncode == 127
    assert cfg.after_marker(p.stderr, "__m__") == b"hpcbridge: command not found: no-such-cmd-xyz\n"
    p = _run_local(cfg.command_line(cfg.RUN_SCRIPT, cfg.run_args(["true"], None, "/no/such/dir"), "__m__"))
    assert p.returncode == 126


def test_login_noise_is_cut_off_and_a_missing_marker_is_none() -> None:
    marker = "__hpcbridge_x__"
    noisy = b"Welcome!\nSubmitted batch job 999999\nno newline" + marker.encode() + b"\n12345\n"
    assert cfg.after_marker(noisy, marker) == b"12345\n"
    assert cfg.after_marker(b"Welcome!\n", marker) is None
    # a noisy rc file in front of the real thing (what bash -c does on a login node)
    line = "echo 'motd line'; echo noise >&2; printf 'half'; " + cfg.command_line(
        cfg.RUN_SCRIPT, cfg.run_args(["echo", "real"], None, None), marker
    )
    p = _run_local(line)
    assert cfg.after_marker(p.stdout, marker) == b"real\n"
    assert cfg.after_marker(p.stderr, marker) == b""


def test_nul_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        cfg.command_line("true", ["a\0b"], "__m__")


def test_remote_path_checks_and_umask() -> None:
    with pytest.raises(ValueError, match="absolute"):
        cfg.check_remote_path("~/x", "write_files")
    with pytest.raises(ValueError, match="newline"):
        cfg.check_remote_path("/a\nb", "read_files")
    assert cfg.umask_for(0o700) == "077" and cfg.umask_for(0o750) == "027"
    assert cfg.expand_user_arg("~/x/y") == ("", "/x/y")
    assert cfg.expand_user_arg("~bob/x") == ("bob", "/x")
    with pytest.raises(ValueError, match="not a user name"):
        cfg.expand_user_arg("~$(id)/x")


def test_write_script_moves_files_into_place(tmp_path: Path) -> None:
    """The tar-stream writer, run by a local sh: files land whole, with their mode, no temporary left."""
    import io
    import tarfile

    target = tmp_path / "job"
    (target / "res").mkdir(parents=True)
    (target / "res" / "old.pkl").write_bytes(b"old")
    tmp = ".hpcbridge-tmp-test"
    files = {str(target / "inputs.bin"): b"x" * 100_000, str(target / "res" / "old.pkl"): b"new"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, data in files.items():
            d, b = os.path.split(path)
            info = tarfile.TarInfo(os.path.join(d, tmp, b).lstrip("/"))
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    p = _run_local(cfg.command_line(ssh._WRITE_SCRIPT, [], "__m__"), stdin=buf.getvalue())
    assert p.returncode == 0, p.stderr
    assert {path: Path(path).read_bytes() for path in files} == files
    assert oct(os.stat(target / "inputs.bin").st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(target)) == ["inputs.bin", "res"] and os.listdir(target / "res") == ["old.pkl"]


def test_upload_script_renames_a_whole_file_into_place_and_cleans_up_on_failure(tmp_path: Path) -> None:
    """The upload stream's script, run by a local sh: the file lands whole with its mode; a failure leaves nothing."""
    data = os.urandom(300_000)
    tmp, dest = str(tmp_path / ".hpcbridge-tmp-x-blob"), str(tmp_path / "blob")
    p = _run_local(cfg.command_line(ssh._UPLOAD_SCRIPT, [tmp, dest, "640", str(len(data))], "__m__"), stdin=data)
    assert p.returncode == 0, p.stderr
    assert Path(dest).read_bytes() == data and oct(os.stat(dest).st_mode & 0o777) == "0o640"
    assert os.listdir(tmp_path) == ["blob"]
    bad = str(tmp_path / "missing" / "blob")  # the rename fails (even for root): the temporary file is removed
    p = _run_local(cfg.command_line(ssh._UPLOAD_SCRIPT, [tmp, bad, "600", str(len(data))], "__m__"), stdin=data)
    assert p.returncode != 0 and b"missing" in p.stderr
    assert os.listdir(tmp_path) == ["blob"]


def test_upload_script_removes_a_stream_cut_short_and_keeps_the_old_file(tmp_path: Path) -> None:
    """cat exits 0 at the end of a stream, whole or not (a drop, or the sender closing the channel after a local
    read error): the announced byte count decides. The file that was there stays as it was."""
    tmp, dest = str(tmp_path / ".hpcbridge-tmp-x-blob"), str(tmp_path / "blob")
    Path(dest).write_bytes(b"old")
    for sent, announced in ((b"x" * 50, 100), (b"", 1)):
        p = _run_local(cfg.command_line(ssh._UPLOAD_SCRIPT, [tmp, dest, "600", str(announced)], "__m__"), stdin=sent)
        assert p.returncode == 3
        assert p.stderr.decode().endswith(f"hpcbridge: upload to {dest} cut short: {len(sent)} of {announced} bytes "
                                          "arrived\n")
        assert os.listdir(tmp_path) == ["blob"] and Path(dest).read_bytes() == b"old"


def test_an_upload_read_error_names_the_file_and_a_file_that_shrank_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"y" * 10)
    assert b"".join(ssh._file_chunks(str(path), 4, 10)) == b"y" * 10
    assert b"".join(ssh._file_chunks(str(path), 4, 6)) == b"y" * 6  # what it held when the upload started
    with pytest.raises(OSError, match=rf"^{path} became shorter while it was being uploaded \(10 of 12 bytes\)$"):
        list(ssh._file_chunks(str(path), 4, 12))

    class Disk:  # a read that fails as a failing disk's does: EIO, and no file name
        def __init__(self, *args: Any) -> None:
            pass

        def __enter__(self) -> Disk:
            return self

        def __exit__(self, *args: Any) -> None:
            pass

        def read(self, size: int) -> bytes:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ssh, "open", Disk, raising=False)
    with pytest.raises(OSError) as err:
        list(ssh._file_chunks(str(path), 4, 10))
    assert str(err.value) == f"[Errno 5] Input/output error: '{path}'"


# -- safe to retry ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "safe"),
    [
        (["sacct", "--jobs=1"], True),
        (["squeue", "--me"], True),
        (["/usr/bin/squeue"], True),
        (["scontrol", "--oneliner", "show", "job", "5"], True),
        (["scontrol", "show", "job", "5"], True),
        (["scontrol", "requeue", "5"], False),
        (["sbatch", "--parsable", "x.sh"], False),
        (["scancel", "5"], False),
        (["qsub", "x.sh"], False),
        (["python3", "-c", "print(1)"], False),
        ([], False),
    ],
)
def test_only_commands_without_side_effects_are_retried(argv: list[str], safe: bool) -> None:
    assert ssh.is_safe(argv) is safe


# -- host keys --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys() -> Dict[str, paramiko.PKey]:
    return {"server": paramiko.RSAKey.generate(1024), "other": paramiko.RSAKey.generate(1024)}


def _spec(tmp_path: Path, strict: str = "yes", port: int = 22) -> cfg.HostSpec:
    return cfg.HostSpec(alias="hpc", hostname="10.1.2.3", user="alice", port=port,
                        known_hosts=(str(tmp_path / "known_hosts"),), global_known_hosts=(),
                        strict_host_key_checking=strict)


def _known(spec: cfg.HostSpec, lines: str) -> ssh.KnownHosts:
    Path(spec.known_hosts[0]).write_text(lines)
    return ssh._load_known_hosts(spec)


def test_known_host_key_passes(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path)
    known = _known(spec, f"10.1.2.3 ssh-rsa {keys['server'].get_base64()}\n")
    ssh._check_host_key(spec, keys["server"], known)  # no error


def test_unknown_host_key_is_refused_with_fingerprint_and_fix(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path, port=2222)
    known = _known(spec, f"10.1.2.3 ssh-rsa {keys['server'].get_base64()}\n")  # port 22 only: not this host
    with pytest.raises(UnknownHostKeyError) as err:
        ssh._check_host_key(spec, keys["server"], known)
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
        ssh._check_host_key(spec, keys["server"], known)
    text = str(err.value)
    assert text.startswith("WARNING: HOST KEY OF hpc (alice@10.1.2.3:22) HAS CHANGED: it now sends ssh-rsa ")
    assert keys["server"].fingerprint in text and keys["other"].fingerprint in text
    assert f"ssh-keygen -R 10.1.2.3 -f {spec.known_hosts[0]}" in text and "\n" not in text


def test_accept_new_adds_an_unknown_key(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path, strict="accept-new")
    known = _known(spec, "")
    ssh._check_host_key(spec, keys["server"], known)
    assert Path(spec.known_hosts[0]).read_text() == f"10.1.2.3 ssh-rsa {keys['server'].get_base64()}\n"
    ssh._check_host_key(spec, keys["server"], ssh._load_known_hosts(spec))  # now known


def test_hashed_known_hosts_entries_are_understood(tmp_path: Path, keys: Dict[str, paramiko.PKey]) -> None:
    spec = _spec(tmp_path)
    hashed = paramiko.HostKeys.hash_host("10.1.2.3")
    ssh._check_host_key(spec, keys["server"], _known(spec, f"{hashed} ssh-rsa {keys['server'].get_base64()}\n"))


def test_jump_host_hint_uses_ssh_with_accept_new(tmp_path: Path) -> None:
    jump = cfg.HostSpec(alias="gw", hostname="gw.example.org", user="ops", port=2200)
    spec = cfg.HostSpec(alias="hpc", hostname="10.0.0.5", user="alice", jumps=(jump,),
                        known_hosts=(str(tmp_path / "kh"),))
    assert cfg.keyscan_hint(spec, "ssh-ed25519") == (
        f"ssh -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={tmp_path / 'kh'} "
        "-J ops@gw.example.org:2200 alice@10.0.0.5 true"
    )


def test_messages_are_one_line_and_say_what_to_do() -> None:
    spec = cfg.HostSpec(alias="hpc", hostname="10.1.2.3", user="alice", identity_files=("/k/id",))
    unreachable = cfg.unreachable_message(spec, "Connection refused")
    assert unreachable == (
        "cannot reach hpc at 10.1.2.3:22: Connection refused; check the host name, your network or VPN, and "
        "`ssh hpc true`; a login node behind a bastion needs [ssh] proxy_jump (or ProxyJump in ~/.ssh/config)"
    )
    auth = cfg.auth_message(spec, ["/k/id"], ["publickey", "keyboard-interactive"])
    assert auth == (
        "alice@10.1.2.3:22 refused the login (tried /k/id; the server allows: publickey, keyboard-interactive); "
        "put your public key in ~/.ssh/authorized_keys there (ssh-copy-id -i /k/id.pub alice@hpc), load it into "
        "ssh-agent (ssh-add /k/id), or set [ssh] user / identity_file"
    )
    assert "\n" not in unreachable + auth


def test_prompt_without_a_terminal_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcbridge.errors import AuthenticationError

    class NoTTY:
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", NoTTY())
    monkeypatch.delitem(__import__("sys").modules, "ipykernel", raising=False)
    ssh.set_prompt(None)
    with pytest.raises(AuthenticationError, match="no terminal to answer it; load the key into ssh-agent"):
        ssh._ask("Passphrase for key ~/.ssh/id: ", False)
    answers = []
    ssh.set_prompt(lambda text, echo: answers.append((text, echo)) or "secret")
    try:
        assert ssh._ask("Code: ", True) == "secret" and answers == [("Code: ", True)]
    finally:
        ssh.set_prompt(None)


def test_streamed_stdout_drops_the_noise_even_when_the_marker_is_split() -> None:
    marker = "__hpcbridge_m__"
    data = b"noise\nmore noise" + marker.encode() + b"\n" + b"payload-" * 1000
    for cut in (1, 3, 7, 64):
        got: list[bytes] = []
        out = ssh._Stdout(marker, got.append)
        for i in range(0, len(data), cut):
            out.add(data[i : i + cut])
        assert b"".join(got) == b"payload-" * 1000
        assert out.result() == b""  # streamed, not kept
    kept = ssh._Stdout(marker, None)
    kept.add(data)
    assert kept.result() == b"payload-" * 1000
    silent = ssh._Stdout(marker, None)
    silent.add(b"only noise, the command never started\n")
    assert silent.result() is None
