"""The SSH transport: the :class:`~hpcbridge.transport.base.Transport` methods over one shared connection, with the
scripts of its file operations (tar streams for many files, ``cat`` streams for one large file)."""

from __future__ import annotations

import functools
import io
import os
import posixpath
import tarfile
import time
import uuid
from typing import AbstractSet, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ...errors import ConfigError, RemoteCommandError, TransportError
from ..base import Completed, OwnedFiles, Owner
from .channel import Input
from .commands import (
    NOT_FOUND,
    RUN_SCRIPT,
    SAFE_COMMANDS,
    check_remote_path,
    expand_user_arg,
    is_safe,
    run_args,
    umask_for,
)
from .config import HostSpec
from .connection import Stats
from .pool import connection_for, release

#: how long a file operation (tar stream, listing, removal) may take
FILE_OP_TIMEOUT_S = 300.0
#: how long one large file's upload or download may take
TRANSFER_TIMEOUT_S = 3600.0
#: a local file is uploaded in blocks of this size
UPLOAD_BLOCK_BYTES = 1 << 20


class SSHTransport:
    """Commands and files on the cluster side over SSH (site-config ``transport = "ssh"``, table ``[ssh]``)."""

    name = "ssh"

    def __init__(self, spec: HostSpec, *, safe_commands: AbstractSet[str] = SAFE_COMMANDS) -> None:
        """``spec``: the endpoint, resolved (:func:`~hpcbridge.transport.ssh.config.host_spec` builds it from a
        site's ``[ssh]`` table). ``safe_commands``: the programs run again on a new connection after a drop."""
        self.spec = spec
        self.safe_commands = frozenset(safe_commands)
        self.conn = connection_for(spec)
        self._closed = False

    @property
    def stats(self) -> Stats:
        return self.conn.stats

    def connect(self) -> None:
        """Connect now (the first operation would otherwise do it)."""
        self.conn.transport()

    # -- commands -----------------------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        input: Optional[bytes] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Completed:
        argv = [str(a) for a in argv]
        args = run_args(argv, env, cwd)
        safe = is_safe(argv, self.safe_commands)
        status, out, err = self.conn.exec(RUN_SCRIPT, args, input=input, timeout=timeout, safe=safe,
                                          what=f"run {argv[0]}")
        stderr = err.decode("utf-8", "replace")
        if status == 127 and stderr.startswith(NOT_FOUND):
            raise TransportError(
                f"command not found on {self.spec.alias}: {argv[0]!r} (is it installed and on the PATH of "
                "non-interactive logins there?)"
            )
        if status == 126 and cwd and not out:
            raise TransportError(f"cannot change to {cwd!r} on {self.spec.alias}: {stderr.strip()}")
        return Completed(argv, status, out.decode("utf-8", "replace"), stderr)

    def _op(self, script: str, args: Sequence[str], what: str, *, input: Input = None,
            ok: Sequence[int] = (0,), timeout: float = FILE_OP_TIMEOUT_S) -> Tuple[int, bytes]:
        status, out, err = self.conn.exec(script, args, input=input, timeout=timeout, safe=True, what=what)
        if status not in ok:
            raise RemoteCommandError(
                f"could not {what} on {self.spec.alias}",
                argv=["sh", "-c", script, *args],
                exit_code=status,
                stderr=err.decode("utf-8", "replace"),
            )
        return status, out

    # -- paths and files ----------------------------------------------------------------------------------
    def expanduser(self, path: str) -> str:
        if not path.startswith("~"):
            return path
        name, rest = expand_user_arg(path)
        if not name:
            if self.conn.home is None:
                _, out = self._op('printf "%s\\n" "$HOME"', [], "find the home directory")
                self.conn.home = out.decode("utf-8", "surrogateescape").strip() or "/"
            return self.conn.home.rstrip("/") + rest if rest else self.conn.home
        _, out = self._op('eval "h=~$1"; printf "%s\\n" "$h"', [name], f"find the home directory of {name}")
        home = out.decode("utf-8", "surrogateescape").strip()
        return home.rstrip("/") + rest if rest else home

    def makedirs(self, *paths: str, mode: int = 0o700) -> None:
        if not paths:
            return
        for path in paths:
            check_remote_path(path, "makedirs")
        self._op('umask "$1" && shift && mkdir -p -- "$@"', [umask_for(mode), *paths], f"create {paths[0]}")

    def write_files(self, files: Mapping[str, bytes], mode: int = 0o600) -> None:
        """All files in one tar stream over one exec channel.

        Each file is extracted into a private folder next to its destination (``DIR/.hpcbridge-tmp-TOKEN/``), then
        renamed into ``DIR`` (rename(2): a reader sees the old file or the whole new one, never a part).
        """
        if not files:
            return
        tmp = f".hpcbridge-tmp-{uuid.uuid4().hex[:12]}"
        buf = io.BytesIO()
        now = int(time.time())
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for path, data in files.items():
                check_remote_path(path, "write_files")
                directory, base = posixpath.split(posixpath.normpath(path))
                if directory == "/" or not base:
                    raise ConfigError(f"write_files: {path!r} is not a file in a folder")
                info = tarfile.TarInfo(posixpath.join(directory, tmp, base).lstrip("/"))
                info.size = len(data)
                info.mode = mode
                info.mtime = now
                tar.addfile(info, io.BytesIO(data))
        self._op(_WRITE_SCRIPT, [], f"write {len(files)} file(s)", input=buf.getvalue())

    def read_files(self, paths: Iterable[str]) -> Dict[str, bytes]:
        """All files in one tar stream over one exec channel; missing ones are left out."""
        return self._read_tar(paths, (), with_owners=False).files

    def read_with_owners(self, paths: Iterable[str], folders: Iterable[str] = ()) -> OwnedFiles:
        """As :meth:`read_files`, in the same one exec channel: the folders go into the tar stream too (their
        headers only), each header carries its owner and mode, and the first such read of a connection starts with
        ``id -u`` (who reads; kept)."""
        return self._read_tar(paths, folders, with_owners=True)

    def _read_tar(self, paths: Iterable[str], folders: Iterable[str], *, with_owners: bool) -> OwnedFiles:
        wanted: Dict[str, List[str]] = {}
        dirs: Dict[str, List[str]] = {}
        for kind, given in ((dirs, folders), (wanted, paths)):
            for path in given:
                check_remote_path(path, "read_files")
                kind.setdefault(posixpath.normpath(path).lstrip("/"), []).append(path)
        if not wanted and not dirs:
            return OwnedFiles({}, {}, -1)
        # folders first: tar looks at each one before it reads the files in it
        names = b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in [*dirs, *wanted])
        ask_uid = with_owners and self.conn.uid is None  # once per connection: the fork of `id` costs ~2 ms
        script = _READ_OWNED_SCRIPT if ask_uid else _READ_SCRIPT
        _, data = self._op(script, [], f"read {len(wanted)} file(s)", input=names)
        if ask_uid:
            line, _, data = data.partition(b"\n")
            self.conn.uid = int(line)
        uid = -1 if self.conn.uid is None else self.conn.uid
        out: Dict[str, bytes] = {}
        owners: Dict[str, Owner] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                name = posixpath.normpath(member.name).lstrip("/")
                if member.isdir():
                    for original in dirs.get(name, []):
                        owners[original] = Owner(member.uid, member.mode & 0o7777)
                    continue
                if not member.isfile():
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                blob = fh.read()
                for original in wanted.get(name, []):
                    out[original] = blob
                    owners[original] = Owner(member.uid, member.mode & 0o7777)
        return OwnedFiles(out, owners, uid)

    def listdir(self, path: str) -> List[str]:
        check_remote_path(path, "listdir")
        _, out = self._op('[ -d "$1" ] || exit 0; exec ls -1A -- "$1"', [path], f"list {path}")
        return [n for n in out.decode("utf-8", "surrogateescape").split("\n") if n]

    def read_tail(self, path: str, max_bytes: int) -> Optional[bytes]:
        check_remote_path(path, "read_tail")
        status, out = self._op(
            '[ -f "$1" ] || exit 3; exec tail -c "$2" -- "$1"', [path, str(int(max_bytes))], f"read {path}",
            ok=(0, 3),
        )
        return None if status == 3 else out

    def read_from(self, path: str, offset: int) -> Optional[bytes]:
        check_remote_path(path, "read_from")
        status, out = self._op(
            '[ -f "$1" ] || exit 3; exec tail -c "+$2" -- "$1"', [path, str(max(0, int(offset)) + 1)],
            f"read {path}", ok=(0, 3),
        )
        return None if status == 3 else out

    def remove_tree(self, path: str) -> None:
        check_remote_path(path, "remove_tree")
        if posixpath.normpath(path).count("/") < 2:
            raise ConfigError(f"remove_tree refuses to remove a top-level folder: {path!r}")
        self._op('rm -rf -- "$1"', [path], f"remove {path}")

    # -- large files (streams over one exec channel) ------------------------------------------------------
    def upload(self, data: Union[bytes, str], remote_path: str, mode: int = 0o600) -> None:
        """One (large) file streamed over one exec channel (``cat`` into a temporary name, then renamed): bytes,
        or a local file's path. Faster than paramiko's SFTP (no request/reply per 32 KB, docs/ssh.md, measured);
        a drop starts it over. Only a complete file is put in place (the cluster side checks the byte count); a
        local file that cannot be read raises its own ``OSError`` (naming it), and the connection stays up."""
        check_remote_path(remote_path, "upload")
        directory, base = posixpath.split(posixpath.normpath(remote_path))
        tmp = posixpath.join(directory, f".hpcbridge-tmp-{uuid.uuid4().hex[:12]}-{base}")
        source: Input
        if isinstance(data, str):
            with open(data, "rb") as fh:  # missing, unreadable or a folder: fails here, before anything is sent
                size = os.fstat(fh.fileno()).st_size
            source = functools.partial(_file_chunks, data, UPLOAD_BLOCK_BYTES, size)
        else:
            size = len(data)
            source = data  # (exec sends big bytes in slices from a thread, as it does a file's chunks)
        self._op(_UPLOAD_SCRIPT, [tmp, remote_path, format(mode & 0o7777, "o"), str(size)], f"upload {remote_path}",
                 input=source, timeout=TRANSFER_TIMEOUT_S)

    def download(self, remote_path: str, local_path: Optional[str] = None) -> Optional[bytes]:
        """One (large) file streamed over one exec channel (``cat``): its bytes, or written to ``local_path``.

        Faster than paramiko's SFTP prefetch (docs/ssh.md, measured); a drop restarts the transfer.
        """
        check_remote_path(remote_path, "download")
        if local_path is None:
            _, data = self._op('exec cat -- "$1"', [remote_path], f"download {remote_path}", timeout=TRANSFER_TIMEOUT_S)
            return data
        with open(local_path, "wb") as fh:

            def sink(chunk: bytes) -> None:
                fh.write(chunk)

            def again() -> None:
                fh.seek(0)
                fh.truncate()

            status, _, err = self.conn.exec(
                'exec cat -- "$1"', [remote_path], timeout=TRANSFER_TIMEOUT_S, safe=True,
                what=f"download {remote_path}", sink=sink, restart=again,
            )
        if status != 0:
            raise RemoteCommandError(f"could not download {remote_path} from {self.spec.alias}", exit_code=status,
                                     stderr=err.decode("utf-8", "replace"))
        return None

    def close(self) -> None:
        """Release this transport's share of the connection (closed when nobody uses it any more)."""
        if not self._closed:
            self._closed = True
            release(self.conn)


#: an upload (arguments TMP DEST MODE SIZE): the stream into a private temporary file; only when it holds exactly
#: SIZE bytes its mode, then renamed into place; removed on any failure. ``cat`` exits 0 on a stream cut short (a
#: drop, or the sender closing the channel after a local read error), so the byte count is what tells (exit 3).
_UPLOAD_SCRIPT = (
    'umask 077; cat >"$1" && n=$(wc -c <"$1") || { rc=$?; rm -f -- "$1"; exit "$rc"; }; '
    '[ "$n" -eq "$4" ] || { rm -f -- "$1"; '
    'printf "hpcbridge: upload to %s cut short: %s of %s bytes arrived\\n" "$2" "$n" "$4" >&2; exit 3; }; '
    'chmod "$3" "$1" && mv -f -- "$1" "$2" || { rc=$?; rm -f -- "$1"; exit "$rc"; }'
)
#: read the files named on stdin (NUL-separated) as one tar stream; -h: a symbolic link's target (and its owner)
_READ_SCRIPT = (
    "cd / && exec tar -c -h --no-recursion -f - --ignore-failed-read --warning=no-failed-read --null -T - 2>/dev/null"
)
#: the same, after a first line with the reading user's uid (the first read_with_owners of a connection)
_READ_OWNED_SCRIPT = "cd / && id -u && " + _READ_SCRIPT[len("cd / && "):]
#: extract (umask 077: the temporary folders are private), then move each folder's files into place, one mv each
_WRITE_SCRIPT = (
    "umask 077; cd / || exit 1; "
    "list=$(tar -x -p -m -v --no-same-owner --quoting-style=literal -f -) || exit 2; "
    "printf '%s\\n' \"$list\" | sed -n 's|/[^/]*$||p' | sort -u | while IFS= read -r t; do "
    'find "/$t" -mindepth 1 -maxdepth 1 -exec mv -f -t "/${t%/*}" -- {} + && rmdir -- "/$t" || exit 3; done'
)


def _file_chunks(path: str, size: int, total: int) -> Iterable[bytes]:
    """The first ``total`` bytes of a local file (its size when the upload started), in blocks of ``size``. An
    error reading it names the file; a file that became shorter is an error too (the cluster side would refuse the
    cut-short stream anyway)."""
    with open(path, "rb") as fh:
        left = total
        while left > 0:
            try:
                block = fh.read(min(size, left))
            except OSError as exc:
                if exc.filename is None:  # a read error (EIO ...) does not say which file
                    exc.filename = path
                raise
            if not block:
                raise OSError(f"{path} became shorter while it was being uploaded ({total - left} of {total} bytes)")
            left -= len(block)
            yield block
