"""The transport seam: the only place that runs processes and touches files on the cluster side."""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Mapping, Optional, Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Completed:
    """What a command returned."""

    argv: List[str]
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who owns a file or folder on the cluster side (``uid``), and its permission bits (``mode``, 0o7777)."""

    uid: int
    mode: int


@dataclasses.dataclass(frozen=True)
class OwnedFiles:
    """Files read together with who could have written them (:meth:`Transport.read_with_owners`).

    ``files``: path -> bytes (missing ones left out); ``owners``: the :class:`Owner` of each file read and of each
    folder asked about that exists (a symbolic link: of its target); ``uid``: the cluster-side user, who runs the
    transport's commands."""

    files: Dict[str, bytes]
    owners: Dict[str, Owner]
    uid: int


class Transport(Protocol):
    """Run argv lists and move bytes on the cluster side (locally, or over SSH).

    Paths are cluster-side paths. ``~`` is expanded by :meth:`expanduser` only.
    """

    name: str

    def run(
        self,
        argv: Sequence[str],
        *,
        input: Optional[bytes] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Completed:
        """Run ``argv`` (never through a shell) and return its output; does not raise on non-zero exit."""

    def expanduser(self, path: str) -> str:
        """``~`` and ``~user`` expanded on the cluster side."""

    def makedirs(self, *paths: str, mode: int = 0o700) -> None:
        """Create each of ``paths`` with its parents (in one round trip); every new directory gets ``mode``."""

    def write_files(self, files: Mapping[str, bytes], mode: int = 0o600) -> None:
        """Write several files, each atomically (temporary name, then rename)."""

    def read_files(self, paths: Iterable[str]) -> Dict[str, bytes]:
        """Read several files; missing ones are left out of the result."""

    def read_with_owners(self, paths: Iterable[str], folders: Iterable[str] = ()) -> OwnedFiles:
        """Read several files as :meth:`read_files` does and, in the same round trip, the owner and mode of each
        file read and of each of ``folders``, and the cluster-side user's uid (what decides whether a file may be
        unpickled: only its owner could have written it)."""

    def listdir(self, path: str) -> List[str]:
        """Names in ``path``; an empty list if it does not exist."""

    def read_tail(self, path: str, max_bytes: int) -> Optional[bytes]:
        """The last ``max_bytes`` of a file, or None if it does not exist."""

    def read_from(self, path: str, offset: int) -> Optional[bytes]:
        """A file's bytes from ``offset`` on (empty at or past its end), or None if it does not exist."""

    def remove_tree(self, path: str) -> None:
        """Remove a folder and everything in it; no error if it is gone."""

    def close(self) -> None:
        """Release connections."""
