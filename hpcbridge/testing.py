"""Test doubles for code that submits jobs: a scripted transport with an in-memory cluster-side filesystem.

A user's unit test of code that submits (docs/testing.md)::

    t = ScriptedTransport(answers={"/usr/bin/python3": this_python(), "sbatch": (0, "4242\\n", ""),
                                   "sacct": (0, "", "")})
    ex = Executor(site=my_site, transport=t)
    job = ex.submit(pow, 2, 10)            # nothing leaves this process
    assert job.job_id == "4242" and "#SBATCH" in t.script_of(job)
    t.complete(job, 1024)                  # as if the job ran and wrote its result
    assert job.result(timeout=10) == 1024

The backend alone:

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
a command that neither covers fails the test with an :class:`AssertionError` that names it. A submit command run
exactly once under its marker (:data:`hpcbridge.submit_once.SUBMIT_ONCE`) is answered by the name of the command it
wraps (``sbatch``), and its marker and record are written as the real wrapper writes them (unless ``answers`` has
one for ``/bin/sh`` itself).

Files live in ``files`` (path -> bytes); ``file_steps`` are merged into it one per :meth:`read_files` (or
:meth:`read_with_owners`) call, to script files that appear over time (a result, a submit record), or raised (a
connection that drops while reading). Every file and folder belongs to ``uid`` (1000), folders with mode 0o700 and
files 0o600, as hpcbridge makes them, unless ``owners`` (path -> :class:`~hpcbridge.transport.base.Owner`) says
otherwise.
Nothing here touches the real filesystem or a scheduler: it proves the decisions of the code around a transport,
never that a feature works on a cluster.
"""

from __future__ import annotations

import json
import posixpath
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import cloudpickle

from ._version import __version__
from .store import JobFolder
from .submit_once import ALREADY_STARTED, SUBMIT_ONCE
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
        elif argv[:3] == ["/bin/sh", "-c", SUBMIT_ONCE] and len(argv) > 5 and "/bin/sh" not in self.answers:
            return self._submit_once(argv, argv[4], argv[5:])
        else:
            step = self._answer(argv)
        if isinstance(step, BaseException):
            raise step
        code, out, err = step
        return Completed(argv, code, out, err)

    def _answer(self, argv: List[str]) -> Step:
        answer = self.answers.get(argv[0] if argv else "")
        if answer is None:
            raise AssertionError(f"ScriptedTransport: no scripted answer for {argv!r}")
        return answer(argv) if callable(answer) and not isinstance(answer, BaseException) else answer

    def _submit_once(self, argv: List[str], marker: str, command: List[str]) -> Completed:
        """What SUBMIT_ONCE does: refuse a used marker, else run the command and record its outcome beside it."""
        if marker in self.files:
            message = f"hpcbridge: {marker} exists: this submission was started before\n"
            return Completed(argv, ALREADY_STARTED, "", message)
        self.files[marker] = b""
        step = self._answer(command)
        if isinstance(step, BaseException):
            raise step
        code, out, err = step
        self.files.update({f"{marker}.out": out.encode(), f"{marker}.err": err.encode(),
                           f"{marker}.rc": f"{code}\n".encode()})
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

    # -- the cluster side of a job --------------------------------------------------------------------------
    def script_of(self, job: Any) -> str:
        """The batch script that was submitted for ``job`` (a :class:`~hpcbridge.job.Job`)."""
        return self.files[JobFolder(job.folder).script].decode()

    def complete(self, job: Any, value: Any, rank: int = 0, host: str = "node1") -> None:
        """Write ``job``'s result file as the worker would after the call returned ``value``."""
        self._result(job, ("ok", value), rank, host)

    def fail(self, job: Any, exc: BaseException, rank: int = 0, host: str = "node1") -> None:
        """Write ``job``'s result file as the worker would after the call raised ``exc``."""
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        self._result(job, ("err", cloudpickle.dumps(exc), name, str(exc), f"{name}: {exc}\n"), rank, host)

    def _result(self, job: Any, outcome: Tuple[Any, ...], rank: int, host: str) -> None:
        ncalls = len(job.submission.jobs[job.task]) if hasattr(job.submission, "jobs") else 1
        outcomes = [outcome if pos == job.position else ("ok", None) for pos in range(ncalls)]
        payload = {"outcomes": outcomes, "rank": rank, "host": host, "started": time.time(), "finished": time.time()}
        self.files[JobFolder(job.folder).result(job.task, rank)] = cloudpickle.dumps(payload)


def this_python() -> Step:
    """The answer of the cluster-side python check (``hpcbridge.remote_env``) for a python like this one, with the
    installed cloudpickle and hpcbridge: give it as the answer for the site's ``python``."""
    info = {
        "python": ".".join(str(v) for v in sys.version_info[:3]),
        "executable": sys.executable,
        "cloudpickle": cloudpickle.__version__,
        "hpcbridge": __version__,
    }
    return (0, json.dumps(info) + "\n", "")
