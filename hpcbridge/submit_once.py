"""Exactly-once submission: a submit command that is never run twice, whatever drops or hangs.

The command runs under a marker (:data:`SUBMIT_ONCE`); after a dropped connection or a timeout, the marker's
record, or the job's tag in the scheduler's listing, tells the outcome; when neither can, the error is
``maybe_ran`` and the job's folder is kept. docs/ssh.md, "Exactly-once submission", tells the whole protocol.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from .errors import CommandTimeoutError, ConnectionLostError, SchedulerError, TransportError
from .schedulers.base import Scheduler
from .transport.base import Completed

log = logging.getLogger("hpcbridge")

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


#: how long a scheduler command (sbatch, scancel, ...) may take before it counts as hung (s)
COMMAND_TIMEOUT_S = 120.0
#: waits between attempts of a command the scheduler never received (see Scheduler.not_sent_errors)
SUBMIT_RETRY_WAITS_S = (2.0, 5.0, 10.0)


class SubmitOnce:
    """Runs scheduler commands for one site; a submission (``tag`` and ``marker``) at most once.

    ``run(argv, timeout)`` runs a command on the cluster side, ``read_files`` reads files there; ``killed_on_timeout``:
    a timed-out command was killed with everything it started (the local transport), so a marker without a record
    will never get one. ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        run: Callable[[Sequence[str], Optional[float]], Completed],
        read_files: Callable[[Iterable[str]], Dict[str, bytes]],
        scheduler: Scheduler,
        site_name: str,
        *,
        killed_on_timeout: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._run_command = run
        self._read_files = read_files
        self.scheduler = scheduler
        self.site_name = site_name
        self.killed_on_timeout = killed_on_timeout
        self._clock = clock
        self._sleep = sleep

    def _run(self, argv: Sequence[str], timeout: Optional[float] = None) -> Completed:
        return self._run_command(argv, COMMAND_TIMEOUT_S if timeout is None else timeout)

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
                out = self._run(argv if once is None else submit_once_argv(once, argv))
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
            self._sleep(wait)
        if out.returncode != 0:
            why = ""
            if out.returncode == NO_MARKER and out.stderr.startswith(_NO_MARKER) and marker is not None:
                why = (f": {out.stderr.strip()[len('hpcbridge: '):]}, so nothing was submitted (is the job folder "
                       "writable, and its filesystem neither read-only nor over quota?)")
            raise SchedulerError(
                f"could not {what} on site {self.site_name!r}{why}",
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
                f"command not found on the cluster side of site {self.site_name!r}: {argv[0]!r} (is it installed "
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
        start = self._clock()
        deadline = start + FIND_DEADLINE_S

        def left(cap: float) -> float:  # a command's timeout within the deadline
            return min(cap, max(FIND_MIN_TIMEOUT_S, deadline - self._clock()))

        for wait in FIND_BY_TAG_WAITS_S:
            if self._clock() + wait > deadline:
                break
            self._sleep(wait)
            try:
                files = self._read_files(record)
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
                    out = self._run(submit_once_argv(marker, argv), timeout=left(COMMAND_TIMEOUT_S))
                except TransportError as exc:
                    if not exc.maybe_ran:  # this copy never went out; the original still may
                        raise self._unknown(lost, tag, f"sending it again failed: {exc}") from exc
                    lost = exc
                    continue
                if _already_started(out):
                    continue  # the original started in the meantime: wait for its record
                return self._unwrap(argv, tag, marker, out)
            if isinstance(lost, CommandTimeoutError) and self.killed_on_timeout:  # killed: no record comes
                why = f"{marker} exists but its command was killed before it recorded an outcome"
                if find is not None:
                    return self._find_by_tag(argv, tag, lost, f"{why}, no job carries the tag hpcbridge:{tag}, and "
                                                              "it is not submitted again")
                raise self._unknown(lost, tag, f"{why}, and it is not submitted again")
            if find is not None:  # started, not finished (or killed before recording): is its job there?
                try:  # a failed lookup, or one that cannot tell (PBS wrappers): the record may still come
                    found = self._job_by_tag(argv, self._run(find, timeout=left(60.0)), tag, lost)
                except TransportError as exc:
                    note, found = f"; the last lookup by tag failed: {exc}", None
                if found is not None:
                    return found
        waited = self._clock() - start
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
            self._sleep(wait)
            try:
                listing = self._run(find, timeout=60.0)
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
        message = f"{lost}{'; ' + why if why else ''} (site {self.site_name!r}; {hint})"
        if isinstance(lost, CommandTimeoutError):
            return CommandTimeoutError(message)
        return ConnectionLostError(message, maybe_ran=True)
