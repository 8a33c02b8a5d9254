"""Local transport: subprocess with argv lists, and the local filesystem."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from .._proc import kill_group
from ..errors import CommandTimeoutError, TransportError
from .base import Completed, OwnedFiles, Owner


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s process group (it leads one: start_new_session) and reap ``proc``. What detached itself
    into a session of its own (the local site's job runner) is not touched."""
    kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


class LocalTransport:
    """Runs commands on this machine (a login node, or the ``local`` site)."""

    name = "local"

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
        try:
            # its own process group, so that a timeout (or Ctrl-C here) ends everything it started, not only
            # argv[0]: a wrapper's sbatch must not go on untracked
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                argv,
                stdin=subprocess.PIPE if input is not None else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise TransportError(f"command not found: {argv[0]!r} (is it installed and on PATH?)") from exc
        with proc:
            try:
                stdout, stderr = proc.communicate(input, timeout=timeout)
            except BaseException as exc:
                _kill_group(proc)
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise CommandTimeoutError(
                        f"command timed out after {timeout} s (it was killed, with what it had started): "
                        f"{' '.join(argv)}"
                    ) from exc
                raise
        return Completed(argv, proc.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))

    def expanduser(self, path: str) -> str:
        return os.path.expanduser(path)

    def makedirs(self, *paths: str, mode: int = 0o700) -> None:
        for path in paths:
            # os.makedirs gives ``mode`` to the leaf only; a new parent (~/.hpcbridge) must be private too
            missing = []
            current = os.path.abspath(path)
            while not os.path.isdir(current):
                missing.append(current)
                current = os.path.dirname(current)
            for directory in reversed(missing):
                try:
                    os.mkdir(directory, mode)
                except FileExistsError:
                    if not os.path.isdir(directory):
                        raise

    def write_files(self, files: Mapping[str, bytes], mode: int = 0o600) -> None:
        for path, data in files.items():
            directory = os.path.dirname(path) or "."
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, mode)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise

    def read_files(self, paths: Iterable[str]) -> Dict[str, bytes]:
        out: Dict[str, bytes] = {}
        for path in paths:
            try:
                with open(path, "rb") as fh:
                    out[path] = fh.read()
            except FileNotFoundError:
                pass
        return out

    def read_with_owners(self, paths: Iterable[str], folders: Iterable[str] = ()) -> OwnedFiles:
        owners: Dict[str, Owner] = {}
        for folder in folders:  # first, as over SSH: a file is read after the folder that holds it was looked at
            try:
                st = os.stat(folder)
            except FileNotFoundError:
                continue
            owners[folder] = Owner(st.st_uid, stat.S_IMODE(st.st_mode))
        out: Dict[str, bytes] = {}
        for path in paths:
            try:  # non-blocking: a FIFO in the file's place must not hang the reader (it is left out, as by tar)
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except FileNotFoundError:
                continue
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fd)  # of the file that is read, whatever replaced the name meanwhile
                if stat.S_ISREG(st.st_mode):
                    owners[path] = Owner(st.st_uid, stat.S_IMODE(st.st_mode))
                    out[path] = fh.read()
        return OwnedFiles(out, owners, os.getuid())

    def listdir(self, path: str) -> List[str]:
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []

    def read_tail(self, path: str, max_bytes: int) -> Optional[bytes]:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                return fh.read()
        except FileNotFoundError:
            return None

    def read_from(self, path: str, offset: int) -> Optional[bytes]:
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, offset))
                return fh.read()
        except FileNotFoundError:
            return None

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        return None
