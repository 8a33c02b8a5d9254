"""What one site needs at run time: its transport, scheduler adapter, poller and the job registry."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ._version import __version__
from .errors import (
    CommandTimeoutError,
    ConfigError,
    ConnectionLostError,
    RemoteEnvironmentError,
    SchedulerError,
    TransportError,
)
from .poll import Poller
from .registry import Registry
from .schedulers import scheduler_for, scrub_prefixes
from .schedulers.base import NativeStatus, Verdict
from .sites import Site
from .transport.base import Completed, Transport

log = logging.getLogger("hpcbridge")

#: Variables of an enclosing job that must not leak into a new submission (JupyterHub-on-HPC notebooks run
#: inside a job): its MPI launch's (srun's PMI, OpenMPI's mpirun), with each scheduler's own (its scrub_prefixes).
SCRUB_PREFIXES = ("PMI_", "PMIX_", "OMPI_COMM_WORLD_")
SCRUB_NAMES = ("HPCBRIDGE_TASK", "HPCBRIDGE_RANK")
#: after a drop or a timeout during a submission: when to look again for its record and for the job by its tag
#: (s), until FIND_DEADLINE_S after the first look (~3 min: longer than a submit command may run,
#: COMMAND_TIMEOUT_S, so a slow one finishes). A deadline, not a count: a look's commands can take long (a resend up
#: to COMMAND_TIMEOUT_S, squeue 60 s), so each gets at most the time left (but FIND_MIN_TIMEOUT_S at least).
FIND_BY_TAG_WAITS_S = (0.0, 1.0, 2.0, 3.0, 4.0) + (5.0,) * 34
FIND_DEADLINE_S = 180.0
FIND_MIN_TIMEOUT_S = 10.0

#: The submit command runs under this constant script, arguments ``MARKER COMMAND...`` (argv-safe: nothing is
#: re-parsed). It first creates MARKER with O_EXCL (``set -C``): after a drop, no marker proves the command never
#: started, so sending it again is safe, and of a late original and its retry only the first to create the marker
#: runs. The command's stdout, stderr and exit code are kept next to it (MARKER.out, .err, .rc: the rc file last,
#: renamed into place), so its outcome survives a reply lost with the connection. A marker that cannot be created
#: exits 125 with the shell's reason (the text after its last ": ", e.g. "Permission denied", "Read-only file
#: system", "Disk quota exceeded").
SUBMIT_ONCE = (
    'm=$1; shift; '
    'command -v -- "$1" >/dev/null 2>&1 || { '
    'printf "hpcbridge: submit command not found: %s\\n" "$1" >&2; exit 127; }; '
    'e=$( (set -C; : >"$m") 2>&1 ) || { '
    '[ -e "$m" ] && { printf "hpcbridge: %s exists: this submission was started before\\n" "$m" >&2; exit 86; }; '
    'printf "hpcbridge: cannot create %s: %s\\n" "$m" "${e##*: }" >&2; exit 125; }; '
    '"$@" >"$m.out" 2>"$m.err"; rc=$?; '
    'printf "%s\\n" "$rc" >"$m.rc.tmp" && mv -f -- "$m.rc.tmp" "$m.rc"; '
    'cat -- "$m.out"; cat -- "$m.err" >&2; exit "$rc"'
)
#: SUBMIT_ONCE's exit codes when its marker exists (the command is not run) or cannot be created, and its messages
ALREADY_STARTED = 86
NO_MARKER = 125
_ALREADY = "this submission was started before"
_NOT_FOUND = "hpcbridge: submit command not found: "
_NO_MARKER = "hpcbridge: cannot create "


def _already_started(out: Completed) -> bool:
    """Whether :data:`SUBMIT_ONCE` found its marker there (the command was not run by this call)."""
    return out.returncode == ALREADY_STARTED and _ALREADY in out.stderr


def submit_once_argv(marker: str, argv: Sequence[str]) -> List[str]:
    """``argv`` run at most once per ``marker`` (see :data:`SUBMIT_ONCE`)."""
    return ["/bin/sh", "-c", SUBMIT_ONCE, "hpcbridge-submit", marker, *argv]


_CHECK = (
    "import json, sys\n"
    "def v(name):\n"
    "    try:\n"
    "        return __import__(name).__version__\n"
    "    except Exception:\n"
    "        return None\n"
    "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'executable': sys.executable,\n"
    "                  'cloudpickle': v('cloudpickle'), 'hpcbridge': v('hpcbridge')}))\n"
)


#: paths that can stand in scheduler directives as they are (no quoting there): no spaces, quotes, % or #
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+,@=:/~-]*$")


#: how long a scheduler command (sbatch, scancel, ...) may take before it counts as hung (s)
COMMAND_TIMEOUT_S = 120.0
#: waits between attempts of a command the scheduler never received (see Scheduler.not_sent_errors)
SUBMIT_RETRY_WAITS_S = (2.0, 5.0, 10.0)


#: cluster-side environments (remote_env_key) that passed Backend.check_remote_env in this process
_ENV_PASSED: Set[Tuple[str, ...]] = set()
_ENV_LOCKS: Dict[Tuple[str, ...], threading.Lock] = {}
_ENV_GUARD = threading.Lock()


def remote_env_key(site: Site) -> Tuple[str, ...]:
    """What identifies a site's cluster-side python: the site, where its commands run, and the python path."""
    target = json.dumps(dict(site.ssh), sort_keys=True, default=str) if site.transport != "local" else ""
    return (site.name, site.transport, target, site.python)


def clean_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``environ`` without the scheduler variables of an enclosing job."""
    environ = os.environ if environ is None else environ
    prefixes = SCRUB_PREFIXES + scrub_prefixes()
    return {k: v for k, v in environ.items() if not k.startswith(prefixes) and k not in SCRUB_NAMES}


def make_transport(site: Site) -> Transport:
    if site.transport == "local":
        from .transport.local import LocalTransport

        return LocalTransport()
    if site.transport == "ssh":
        try:
            from .transport.ssh import SSHTransport  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                f"site {site.name!r}: the ssh transport is not available ({exc}); install it with: "
                "pip install 'hpcbridge[ssh]' (or pip install paramiko)"
            ) from exc
        return SSHTransport(site)  # type: ignore[no-any-return,unused-ignore]
    raise ConfigError(f"site {site.name!r}: unknown transport {site.transport!r}")


class Backend:
    """Shared by an executor and its ``with_resources`` copies.

    ``transport``: the one to use instead of the site's own (``hpcbridge.testing.ScriptedTransport`` in tests).
    """

    def __init__(self, site: Site, folder: Optional[str] = None, *, transport: Optional[Transport] = None) -> None:
        self.site = site
        self.transport = make_transport(site) if transport is None else transport
        self.root = self.transport.expanduser(folder or site.workdir).rstrip("/")
        if not SAFE_PATH.match(self.root):
            raise ConfigError(
                f"site {site.name!r}: the job folder {self.root!r} must be an absolute path without spaces, quotes, "
                "'%' or '#' (it is written into the scheduler's directives); set another `workdir` in the "
                "site-config or pass folder=..."
            )
        self.scheduler = scheduler_for(site, self.root)
        #: what the scheduler's answers taught about the cluster (the adapter keeps no state)
        self.facts = self.scheduler.initial_facts()
        self.poller = Poller(self)
        self.registry = Registry()
        self._root_ready = False
        self._final: List[Tuple[str, int, str]] = []
        self._final_lock = threading.Lock()

    # -- commands -----------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: Optional[float] = None) -> Completed:
        env = clean_env() if self.site.transport == "local" else None
        return self.transport.run(argv, env=env, timeout=COMMAND_TIMEOUT_S if timeout is None else timeout)

    def run_checked(
        self, argv: Sequence[str], what: str, tag: Optional[str] = None, marker: Optional[str] = None
    ) -> Completed:
        """Run ``argv``; a non-zero exit raises :class:`SchedulerError`.

        ``tag``: ``argv`` submits the job tagged ``hpcbridge:TAG``. If the connection drops after it was sent, or
        the command hangs past COMMAND_TIMEOUT_S (either way the outcome is unknown), it is never simply sent again.
        ``marker`` (a path in the job's folder): the command runs under :data:`SUBMIT_ONCE`, and the marker tells
        whether it started; it is sent again only when it provably did not (:meth:`_find_submitted`). Without a
        marker the job is only looked up by its tag.
        """
        not_sent = self.scheduler.not_sent_errors
        for attempt, wait in enumerate((*SUBMIT_RETRY_WAITS_S, None)):
            # an attempt after one that the scheduler never received gets its own marker (that one is used up)
            once = None if marker is None or tag is None else marker if attempt == 0 else f"{marker}.{attempt}"
            try:
                out = self.run(argv if once is None else submit_once_argv(once, argv))
            except (ConnectionLostError, CommandTimeoutError) as exc:
                if tag is None or not exc.maybe_ran:
                    raise
                if once is not None:
                    out = self._find_submitted(argv, tag, once, exc)
                elif self.scheduler.find_by_tag_argv(tag) is not None:
                    out = self._find_by_tag(argv, tag, exc)
                else:
                    raise
            else:
                if once is not None and tag is not None:
                    out = self._unwrap(argv, tag, once, out)
            # the controller could not even be reached (it restarts, or is overloaded): nothing was submitted,
            # so trying again is safe
            if wait is None or out.returncode == 0 or not any(e in out.stderr for e in not_sent):
                break
            log.warning("hpcbridge: %s: %s; trying again in %s s", out.argv[0], out.stderr.strip()[-200:], wait)
            time.sleep(wait)
        if out.returncode != 0:
            why = ""
            if out.returncode == NO_MARKER and out.stderr.startswith(_NO_MARKER) and marker is not None:
                why = (f": {out.stderr.strip()[len('hpcbridge: '):]}, so nothing was submitted (is the job folder "
                       "writable, and its filesystem neither read-only nor over quota?)")
            raise SchedulerError(
                f"could not {what} on site {self.site.name!r}{why}",
                argv=out.argv,
                exit_code=out.returncode,
                stdout=out.stdout,
                stderr=out.stderr,
            )
        return out

    def _unwrap(self, argv: Sequence[str], tag: str, marker: str, out: Completed) -> Completed:
        """What :data:`SUBMIT_ONCE` returned, as if ``argv`` had run by itself."""
        if out.returncode == 127 and out.stderr.startswith(_NOT_FOUND):
            raise TransportError(
                f"command not found on the cluster side of site {self.site.name!r}: {argv[0]!r} (is it installed "
                "and on the PATH of non-interactive logins there?)"
            )
        if _already_started(out):  # started by someone else: find its job
            return self._find_submitted(argv, tag, marker, ConnectionLostError(out.stderr.strip(), maybe_ran=True))
        return Completed(list(argv), out.returncode, out.stdout, out.stderr)

    def _find_submitted(self, argv: Sequence[str], tag: str, marker: str, lost: TransportError) -> Completed:
        """After a drop or a timeout during a submission run under ``marker``: its outcome, never a second job.

        Each look reads the marker's record (one round trip): the recorded result if the command finished; if
        there is no marker the command never started, so it is sent again (safe: the marker lets only one copy
        run); if it started and has not finished (or was killed before recording), the job is looked for by its
        tag. Without an answer by FIND_DEADLINE_S (~3 min; a look is not started after it), or when sending it
        again fails, the error says where the job would show; it is ``maybe_ran`` (the folder is kept).

        On the local transport a timed-out command was killed with everything it started (LocalTransport.run), so
        a marker without a record will never get one: the job is looked up by its tag at once (a few looks), or the
        error stands.
        """
        find = self.scheduler.find_by_tag_argv(tag)
        record = [marker, f"{marker}.rc", f"{marker}.out", f"{marker}.err"]
        note = ""
        start = time.monotonic()
        deadline = start + FIND_DEADLINE_S

        def left(cap: float) -> float:  # a command's timeout within the deadline
            return min(cap, max(FIND_MIN_TIMEOUT_S, deadline - time.monotonic()))

        for wait in FIND_BY_TAG_WAITS_S:
            if time.monotonic() + wait > deadline:
                break
            time.sleep(wait)
            try:
                files = self.transport.read_files(record)
            except TransportError as exc:
                raise self._unknown(lost, tag, f"its record {marker} could not be read: {exc}") from exc
            if record[1] in files:
                text = {k: v.decode("utf-8", "replace") for k, v in files.items()}
                try:
                    code = int(text[record[1]].strip())
                except ValueError:
                    code = 1
                log.warning("hpcbridge: the submission was interrupted (%s); its command had finished on the "
                            "cluster side (exit code %s, recorded in %s): not submitted again", lost, code, marker)
                return Completed(list(argv), code, text.get(record[2], ""), text.get(record[3], ""))
            if marker not in files:
                log.warning("hpcbridge: the submission was interrupted (%s) and %s does not exist, so the command "
                            "never started: submitting it again", lost, marker)
                try:
                    out = self.run(submit_once_argv(marker, argv), timeout=left(COMMAND_TIMEOUT_S))
                except TransportError as exc:
                    if not getattr(exc, "maybe_ran", False):  # this copy never went out; the original still may
                        raise self._unknown(lost, tag, f"sending it again failed: {exc}") from exc
                    lost = exc
                    continue
                if _already_started(out):
                    continue  # the original started in the meantime: wait for its record
                return self._unwrap(argv, tag, marker, out)
            if isinstance(lost, CommandTimeoutError) and self.site.transport == "local":  # killed: no record comes
                why = f"{marker} exists but its command was killed before it recorded an outcome"
                if find is not None:
                    return self._find_by_tag(argv, tag, lost, f"{why}, no job carries the tag hpcbridge:{tag}, and "
                                                              "it is not submitted again")
                raise self._unknown(lost, tag, f"{why}, and it is not submitted again")
            if find is not None:  # started, not finished (or killed before recording): is its job there?
                try:  # a failed lookup, or one that cannot tell (PBS wrappers): the record may still come
                    found = self._job_by_tag(argv, self.run(find, timeout=left(60.0)), tag, lost)
                except TransportError as exc:
                    note, found = f"; the last lookup by tag failed: {exc}", None
                if found is not None:
                    return found
        waited = time.monotonic() - start
        raise self._unknown(
            lost, tag, f"the command started ({marker} exists) but neither finished nor shows a job after "
            f"{waited:.0f} s, and it is not submitted again{note}"
        )

    def _find_by_tag(
        self, argv: Sequence[str], tag: str, lost: TransportError, why: Optional[str] = None
    ) -> Completed:
        """After a drop or a timeout during a submission run without a marker (or one killed before recording):
        the job if its tag shows within a few looks, else the error stands, saying ``why`` (never submitted again:
        whether it ran cannot be told)."""
        find = self.scheduler.find_by_tag_argv(tag)
        assert find is not None  # run_checked asked
        for wait in FIND_BY_TAG_WAITS_S[:5]:
            time.sleep(wait)
            try:
                listing = self.run(find, timeout=60.0)
            except TransportError as exc:
                raise self._unknown(lost, tag, "") from exc
            found = self._job_by_tag(argv, listing, tag, lost)  # (a listing that cannot tell raises its own error)
            if found is not None:
                return found
        if why is None:
            why = f"no job carries the tag hpcbridge:{tag} yet, and it is not submitted again in case the command " \
                  "still does"
        raise self._unknown(lost, tag, why)

    def _job_by_tag(
        self, argv: Sequence[str], listing: Completed, tag: str, lost: TransportError
    ) -> Optional[Completed]:
        """The job tagged ``hpcbridge:TAG`` in ``listing`` (the output of the scheduler's lookup command): what
        ``argv`` would have printed had its reply not been lost, or None when no job carries the tag (yet).

        Raises the scheduler's :class:`ConnectionLostError` when the listing cannot tell (PBS wrappers without
        Output_Path): with a marker the record may still come; without one that error stands, not taken for a
        failed lookup."""
        job_id = self.scheduler.parse_find_by_tag(listing.stdout, tag) if listing.returncode == 0 else None
        if not job_id:
            return None
        log.warning("hpcbridge: the submission was interrupted (%s); job %s was found by its tag hpcbridge:%s (not "
                    "submitted again)", lost, job_id, tag)
        return Completed(list(argv), 0, f"{job_id}\n", "")

    def _unknown(self, lost: TransportError, tag: str, why: str) -> TransportError:
        """The error when a submission's outcome stays unknown (``maybe_ran``: the caller keeps the folder)."""
        hint = f"the job, if submitted, {self.scheduler.find_by_tag_hint(tag)}"
        message = f"{lost}{'; ' + why if why else ''} (site {self.site.name!r}; {hint})"
        if isinstance(lost, CommandTimeoutError):
            return CommandTimeoutError(message)
        return ConnectionLostError(message, maybe_ran=True)

    def query_status(
        self, job_ids: Sequence[str], since: float, arrays: Optional[Mapping[str, int]] = None, _again: bool = False
    ) -> Optional[Dict[str, NativeStatus]]:
        """Statuses of all tasks of ``job_ids`` (``arrays``: the array ones -> their sizes), or None when the query
        failed (retried later)."""
        query = self.scheduler.status_query(job_ids, since, time.time(), self.facts, arrays)
        try:
            # a hung controller holds up the poller thread: give up after 30 s, retry on the back-off
            out = self.run(query.argv, timeout=30)
        except TransportError as exc:
            log.warning("hpcbridge: status query failed, will retry: %s", exc)
            return None
        answer = self.scheduler.parse_status(query, out)
        if answer.facts is not None:
            self.facts = answer.facts
        if answer.note:
            log.warning("hpcbridge: site %r: %s", self.site.name, answer.note)
        if answer.verdict is Verdict.ANSWERED:
            return dict(answer.statuses)
        if answer.verdict is Verdict.ASK_AGAIN and not _again:
            return self.query_status(job_ids, since, arrays, _again=True)
        log.warning("hpcbridge: status query %s failed (%s), will retry: %s",
                    out.argv[0], out.returncode, out.stderr.strip()[-300:])
        return None

    def show_job(self, task_id: str) -> Optional[NativeStatus]:
        argv = self.scheduler.show_job_argv(task_id, self.facts)
        if argv is None:
            return None
        out = self.run(argv, timeout=30)  # a TransportError: the poller stops its per-task looks until next time
        if out.returncode != 0:
            return self.scheduler.show_job_failed(task_id, out.returncode, out.stderr)
        return self.scheduler.parse_show_job(task_id, out.stdout)

    # -- folders ------------------------------------------------------------------------------------------
    def ensure_root(self) -> None:
        if not self._root_ready:
            self.transport.makedirs(self.root, mode=0o700)
            self._root_ready = True

    # -- the cluster-side python ----------------------------------------------------------------------------
    def check_remote_env(self) -> None:
        """Once per site and process: the cluster's python must match ours (major.minor) and have cloudpickle and
        hpcbridge. A passed check is remembered for every executor of the same site, target and python; a failed
        one is not, so the next submission checks again (after the site was fixed)."""
        # the very interpreter running this process (not its realpath: a venv's python is a symlink to the
        # system one, with other packages)
        if self.site.transport == "local" and os.path.abspath(self.site.python) == sys.executable:
            return
        key = remote_env_key(self.site)
        with _ENV_GUARD:
            lock = _ENV_LOCKS.setdefault(key, threading.Lock())
        with lock:  # executors of one site starting together run the check once
            if key in _ENV_PASSED:
                return
            self._check_remote_env()
            _ENV_PASSED.add(key)

    def _check_remote_env(self) -> None:
        import cloudpickle

        python = self.site.python
        fix = f"set `python = \"/path/to/python3.{sys.version_info[1]}\"` in the site-config of {self.site.name!r}"
        try:
            out = self.run([python, "-c", _CHECK], timeout=120)
        except TransportError as exc:
            raise RemoteEnvironmentError(
                f"site {self.site.name!r}: the cluster-side python {python!r} could not be started ({exc}); {fix}"
            ) from exc
        try:
            info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        except (ValueError, IndexError):
            info = None
        if info is None:
            raise RemoteEnvironmentError(
                f"site {self.site.name!r}: the cluster-side python {python!r} did not run "
                f"(exit code {out.returncode}: {out.stderr.strip()[-300:]}); {fix}"
            )
        ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
        theirs = ".".join(info["python"].split(".")[:2])
        problems = []
        if theirs != ours:
            problems.append(f"Python {info['python']} there, {sys.version.split()[0]} here (major.minor must match)")
        if info["cloudpickle"] is None:
            problems.append("cloudpickle is not installed there")
        elif info["cloudpickle"].split(".")[0] != cloudpickle.__version__.split(".")[0]:
            problems.append(f"cloudpickle {info['cloudpickle']} there, {cloudpickle.__version__} here")
        if info["hpcbridge"] is None:
            problems.append("hpcbridge is not installed there")
        if problems:
            wanted = f"'hpcbridge=={__version__}' 'cloudpickle=={cloudpickle.__version__}'"
            if theirs != ours:  # no package installed into that python can help
                remedy = f"{fix}, a Python {ours} with {wanted} installed"
            else:
                remedy = f"install matching versions there ({info['executable']} -m pip install {wanted}), or {fix}"
            raise RemoteEnvironmentError(
                f"site {self.site.name!r}: the cluster-side python {info['executable']} cannot run these jobs: "
                + "; ".join(problems)
                + f". Fix: {remedy}"
            )

    # -- registry -----------------------------------------------------------------------------------------
    def note_final(self, job: object) -> None:
        with self._final_lock:
            self._final.append((job.job_id, job.position, job.state.value))  # type: ignore[attr-defined]

    def flush_states(self) -> None:
        """Write the final states noted so far to the registry; kept for the next flush if that fails."""
        with self._final_lock:
            rows, self._final = self._final, []
        if not rows:
            return
        try:
            self.registry.update_states(self.site.name, rows)
        except Exception as exc:  # the registry is a convenience; never fail a job over it
            log.warning("hpcbridge: could not update the job registry (will retry): %s", exc)
            with self._final_lock:
                self._final[:0] = rows
