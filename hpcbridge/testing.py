"""Test doubles for code that submits jobs: a scripted transport with an in-memory cluster-side filesystem.

    >>> from hpcbridge.backend import Backend
    >>> from hpcbridge.sites import site_from_mapping
    >>> from hpcbridge.testing import ScriptedTransport
    >>> t = ScriptedTransport(answers={"sbatch": (0, "4242\\n", "")})
    >>> b = Backend(site_from_mapping("demo", {"scheduler": "slurm", "workdir": "/w"}), transport=t)
    >>> b.run(["sbatch", "--parsable", "/w/x/script.sh"]).stdout
    '4242\\n'
    >>> t.programs()
    ['sbatch']

A transport answers commands in one of two ways, which may be mixed: ``steps`` (consumed in order by each
:meth:`~ScriptedTransport.run`: an exception to raise, or ``(exit code, stdout, stderr)``) and ``answers`` (by
program name, ``argv[0]``: the same kind of value, or a callable given the argv that returns one). Steps come first;
a command that neither covers fails the test with an :class:`AssertionError` that names it.

Files live in ``files`` (path -> bytes); ``file_steps`` are merged into it one per :meth:`read_files` (or
:meth:`read_with_owners`) call, to script files that appear over time (a result, a submit record), or raised (a
connection that drops while reading). Every file and folder belongs to ``uid`` (1000), folders with mode 0o700 and
files 0o600, as hpcbridge makes them, unless ``owners`` (path -> :class:`~hpcbridge.transport.base.Owner`) says
otherwise.
Nothing here touches the real filesystem or a scheduler: it proves the decisions of the code around a transport,
never that a feature works on a cluster.
"""

from __future__ import annotations

import posixpath
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .transport.base import Completed, OwnedFiles, Owner

#: one scripted answer: an exception to raise, or (exit code, stdout, stderr)
Step = Union[BaseException, Tuple[int, str, str]]
Answer = Union[Step, Callable[[List[str]], Step]]
#: files that appear before one read_files call (merged into ``files``), or an exception that call raises
FileStep = Union[Mapping[str, bytes], BaseException]


class ScriptedTransport:
    """A :class:`~hpcbridge.transport.base.Transport` that replays scripted answers and records every call.

    ``calls`` holds each command's argv, and ``["read_files"]`` (etc.) for each file operation, in order.
    """

    name = "scripted"

    def __init__(
        self,
        steps: Sequence[Step] = (),
        *,
        answers: Optional[Mapping[str, Answer]] = None,
        files: Optional[Mapping[str, bytes]] = None,
        file_steps: Sequence[FileStep] = (),
        home: str = "/home/user",
        uid: int = 1000,
        owners: Optional[Mapping[str, Owner]] = None,
    ) -> None:
        self.steps: List[Step] = list(steps)
        self.answers: Dict[str, Answer] = dict(answers or {})
        self.files: Dict[str, bytes] = dict(files or {})
        self.file_steps: List[FileStep] = list(file_steps)
        self.dirs: Set[str] = set()
        self.home = home
        self.uid = uid
        self.owners: Dict[str, Owner] = dict(owners or {})
        self.calls: List[List[str]] = []
        #: the timeout each command was run with (None: none), in the order of the commands
        self.timeouts: List[Optional[float]] = []
        self.closed = False

    # -- what happened ------------------------------------------------------------------------------------
    def programs(self) -> List[str]:
        """The program (``argv[0]``) of each call, in order (file operations by their method's name)."""
        return [c[0] for c in self.calls]

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
        argv = list(argv)
        self.calls.append(argv)
        self.timeouts.append(timeout)
        step: Step
        if self.steps:
            step = self.steps.pop(0)
        elif argv and argv[0] in self.answers:
            answer = self.answers[argv[0]]
            step = answer(argv) if callable(answer) and not isinstance(answer, BaseException) else answer
        else:
            raise AssertionError(f"ScriptedTransport: no scripted answer for {argv!r}")
        if isinstance(step, BaseException):
            raise step
        code, out, err = step
        return Completed(argv, code, out, err)

    # -- files --------------------------------------------------------------------------------------------
    def expanduser(self, path: str) -> str:
        return self.home + path[1:] if path == "~" or path.startswith("~/") else path

    def makedirs(self, *paths: str, mode: int = 0o700) -> None:
        self.calls.append(["makedirs", *paths])
        self.dirs.update(paths)

    def write_files(self, files: Mapping[str, bytes], mode: int = 0o600) -> None:
        self.calls.append(["write_files", *files])
        self.files.update(files)

    def read_files(self, paths: Iterable[str]) -> Dict[str, bytes]:
        self.calls.append(["read_files"])
        self._file_step()
        return {p: self.files[p] for p in paths if p in self.files}

    def read_with_owners(self, paths: Iterable[str], folders: Iterable[str] = ()) -> OwnedFiles:
        self.calls.append(["read_with_owners"])
        self._file_step()
        files = {p: self.files[p] for p in paths if p in self.files}
        owners = {p: self.owners.get(p, Owner(self.uid, 0o600)) for p in files}
        for folder in folders:
            prefix = folder.rstrip("/") + "/"
            if folder in self.dirs or any(p.startswith(prefix) for p in self.files):
                owners[folder] = self.owners.get(folder, Owner(self.uid, 0o700))
        return OwnedFiles(files, owners, self.uid)

    def _file_step(self) -> None:
        if self.file_steps:
            step = self.file_steps.pop(0)
            if isinstance(step, BaseException):
                raise step
            self.files.update(step)

    def listdir(self, path: str) -> List[str]:
        self.calls.append(["listdir", path])
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/", 1)[0] for p in self.files if p.startswith(prefix)})

    def read_tail(self, path: str, max_bytes: int) -> Optional[bytes]:
        self.calls.append(["read_tail", path])
        data = self.files.get(path)
        return None if data is None else data[-max_bytes:]

    def read_from(self, path: str, offset: int) -> Optional[bytes]:
        self.calls.append(["read_from", path])
        data = self.files.get(path)
        return None if data is None else data[offset:]

    def remove_tree(self, path: str) -> None:
        self.calls.append(["remove_tree", path])
        prefix = posixpath.normpath(path) + "/"
        for name in [p for p in self.files if p.startswith(prefix)]:
            del self.files[name]
        self.dirs = {d for d in self.dirs if d != path and not d.startswith(prefix)}

    def close(self) -> None:
        self.closed = True
