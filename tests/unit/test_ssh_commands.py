"""Remote command lines and their quoting, the login noise cut off, the file-operation scripts (run by a local sh),
and which commands are safe to retry. No network.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpcbridge.errors import ConfigError
from hpcbridge.schedulers.pbs import PBSScheduler
from hpcbridge.schedulers.slurm import SlurmScheduler
from hpcbridge.transport.ssh import commands as cmd
from hpcbridge.transport.ssh import transport

#: what a transport of a Slurm or PBS site retries: the generic reads and each scheduler's queries
ALL_SAFE = cmd.SAFE_COMMANDS | SlurmScheduler.safe_commands | PBSScheduler.safe_commands

NASTY = ["a b", "it's", '"q"', "$HOME", "`id`", "; rm -rf /", "\\n", "*", "~", "", "tab\there", "new\nline", "ünï"]


def _run_local(line: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """What a login shell does with the command line: parse it once (here: bash -c)."""
    return subprocess.run(["bash", "-c", line], input=stdin, capture_output=True, check=False, timeout=30)


def test_every_argument_reaches_the_command_exactly_as_given() -> None:
    marker = "__hpcbridge_test__"
    argv = ["printf", "%s\\0", *NASTY]
    line = cmd.command_line(cmd.RUN_SCRIPT, cmd.run_args(argv, None, None), marker)
    p = _run_local(line)
    assert p.returncode == 0, p.stderr
    out = cmd.after_marker(p.stdout, marker)
    assert out is not None
    assert out.decode().split("\0")[:-1] == NASTY
    assert cmd.after_marker(p.stderr, marker) == b""


def test_env_and_cwd(tmp_path: Path) -> None:
    marker = "__m__"
    line = cmd.command_line(
        cmd.RUN_SCRIPT, cmd.run_args(["sh", "-c", 'pwd; printf "%s" "$X"'], {"X": "it's $x"}, str(tmp_path)), marker
    )
    out = cmd.after_marker(_run_local(line).stdout, marker)
    assert out == f"{tmp_path}\nit's $x".encode()
    with pytest.raises(ConfigError, match="letters, digits and _"):
        cmd.run_args(["true"], {"BAD-NAME": "1"}, None)
    with pytest.raises(ConfigError, match="may not contain '='"):
        cmd.run_args(["A=1"], {"X": "1"}, None)
    with pytest.raises(ConfigError, match="empty command"):
        cmd.run_args([], None, None)


def test_missing_command_and_bad_cwd_are_recognisable() -> None:
    p = _run_local(cmd.command_line(cmd.RUN_SCRIPT, cmd.run_args(["no-such-cmd-xyz"], None, None), "__m__"))
    assert p.returncode == 127
    assert cmd.after_marker(p.stderr, "__m__") == b"hpcbridge: command not found: no-such-cmd-xyz\n"
    p = _run_local(cmd.command_line(cmd.RUN_SCRIPT, cmd.run_args(["true"], None, "/no/such/dir"), "__m__"))
    assert p.returncode == 126


def test_login_noise_is_cut_off_and_a_missing_marker_is_none() -> None:
    marker = "__hpcbridge_x__"
    noisy = b"Welcome!\nSubmitted batch job 999999\nno newline" + marker.encode() + b"\n12345\n"
    assert cmd.after_marker(noisy, marker) == b"12345\n"
    assert cmd.after_marker(b"Welcome!\n", marker) is None
    # a noisy rc file in front of the real thing (what bash -c does on a login node)
    line = "echo 'motd line'; echo noise >&2; printf 'half'; " + cmd.command_line(
        cmd.RUN_SCRIPT, cmd.run_args(["echo", "real"], None, None), marker
    )
    p = _run_local(line)
    assert cmd.after_marker(p.stdout, marker) == b"real\n"
    assert cmd.after_marker(p.stderr, marker) == b""


def test_nul_bytes_are_refused() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        cmd.command_line("true", ["a\0b"], "__m__")


def test_remote_path_checks_and_umask() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        cmd.check_remote_path("~/x", "write_files")
    with pytest.raises(ConfigError, match="newline"):
        cmd.check_remote_path("/a\nb", "read_files")
    assert cmd.umask_for(0o700) == "077" and cmd.umask_for(0o750) == "027"
    assert cmd.expand_user_arg("~/x/y") == ("", "/x/y")
    assert cmd.expand_user_arg("~bob/x") == ("bob", "/x")
    with pytest.raises(ConfigError, match="not a user name"):
        cmd.expand_user_arg("~$(id)/x")


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
    p = _run_local(cmd.command_line(transport._WRITE_SCRIPT, [], "__m__"), stdin=buf.getvalue())
    assert p.returncode == 0, p.stderr
    assert {path: Path(path).read_bytes() for path in files} == files
    assert oct(os.stat(target / "inputs.bin").st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(target)) == ["inputs.bin", "res"] and os.listdir(target / "res") == ["old.pkl"]


def test_upload_script_renames_a_whole_file_into_place_and_cleans_up_on_failure(tmp_path: Path) -> None:
    """The upload stream's script, run by a local sh: the file lands whole with its mode; a failure leaves nothing."""
    data = os.urandom(300_000)
    tmp, dest = str(tmp_path / ".hpcbridge-tmp-x-blob"), str(tmp_path / "blob")
    p = _run_local(cmd.command_line(transport._UPLOAD_SCRIPT, [tmp, dest, "640", str(len(data))], "__m__"), stdin=data)
    assert p.returncode == 0, p.stderr
    assert Path(dest).read_bytes() == data and oct(os.stat(dest).st_mode & 0o777) == "0o640"
    assert os.listdir(tmp_path) == ["blob"]
    bad = str(tmp_path / "missing" / "blob")  # the rename fails (even for root): the temporary file is removed
    p = _run_local(cmd.command_line(transport._UPLOAD_SCRIPT, [tmp, bad, "600", str(len(data))], "__m__"), stdin=data)
    assert p.returncode != 0 and b"missing" in p.stderr
    assert os.listdir(tmp_path) == ["blob"]


def test_upload_script_removes_a_stream_cut_short_and_keeps_the_old_file(tmp_path: Path) -> None:
    """cat exits 0 at the end of a stream, whole or not (a drop, or the sender closing the channel after a local
    read error): the announced byte count decides. The file that was there stays as it was."""
    tmp, dest = str(tmp_path / ".hpcbridge-tmp-x-blob"), str(tmp_path / "blob")
    Path(dest).write_bytes(b"old")
    for sent, announced in ((b"x" * 50, 100), (b"", 1)):
        line = cmd.command_line(transport._UPLOAD_SCRIPT, [tmp, dest, "600", str(announced)], "__m__")
        p = _run_local(line, stdin=sent)
        assert p.returncode == 3
        assert p.stderr.decode().endswith(f"hpcbridge: upload to {dest} cut short: {len(sent)} of {announced} bytes "
                                          "arrived\n")
        assert os.listdir(tmp_path) == ["blob"] and Path(dest).read_bytes() == b"old"


def test_an_upload_read_error_names_the_file_and_a_file_that_shrank_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"y" * 10)
    assert b"".join(transport._file_chunks(str(path), 4, 10)) == b"y" * 10
    assert b"".join(transport._file_chunks(str(path), 4, 6)) == b"y" * 6  # what it held when the upload started
    with pytest.raises(OSError, match=rf"^{path} became shorter while it was being uploaded \(10 of 12 bytes\)$"):
        list(transport._file_chunks(str(path), 4, 12))

    class Disk:  # a read that fails as a failing disk's does: EIO, and no file name
        def __init__(self, *args: Any) -> None:
            pass

        def __enter__(self) -> Disk:
            return self

        def __exit__(self, *args: Any) -> None:
            pass

        def read(self, size: int) -> bytes:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(transport, "open", Disk, raising=False)
    with pytest.raises(OSError) as err:
        list(transport._file_chunks(str(path), 4, 10))
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
    assert cmd.is_safe(argv, ALL_SAFE) is safe
