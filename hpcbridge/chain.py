"""Requeue by follow-up jobs (PBS, docs/requeue.md): a warned run hands over to a job with another id.

PBS lets only operators requeue a job (``qrerun``). With requeue on, a PBS job's batch shell that was warned (its
own walltime timer, a SIGTERM) submits the same script again with ``-W depend=afterany:<its id>`` and notes the
follow-up's id in the task's run note (``ckpt/<task>.run<N>``: ``REASON WARNED REQUEUED NEXT HOST START``, epochs; ``-``
for none). The chain is the first id (the one the user sees) and the follow-ups, found in those notes: the poller
asks about the live link, a link that ended without a result is followed to the next one its note names, and a
note that names none ends the task as the note says (TIMEOUT, PREEMPTED). ``job.attempts`` has one entry per
link. The chain is read from the job folder, so ``attach()`` after a client restart follows it too.

The functions below on notes are pure; :func:`follow`, :func:`cancelled` and :func:`attempts_of` read and write
the job folder through the submission's transport (the submission calls them under the backend's lock).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, ContextManager, Dict, List, Optional, Protocol, Sequence, Tuple

from .job import Job
from .schedulers.base import NativeStatus
from .state import Attempt, JobState
from .store import JobFolder
from .transport.base import Transport

log = logging.getLogger("hpcbridge")

#: how the batch shell's reason ends the task when no follow-up continues it
_ENDS = {"TIMEOUT": JobState.TIMEOUT, "PREEMPTED": JobState.PREEMPTED}


@dataclasses.dataclass(frozen=True)
class LinkNote:
    """A run's note as the PBS batch shell writes it (templates/partials/requeue_pbs.sh.j2)."""

    reason: str
    warned_at: Optional[float]
    requeued_at: Optional[float]
    #: the follow-up job's id ("" when the run was not continued)
    next_id: str
    host: str
    text: str
    #: the run's start (its batch shell's), epoch seconds
    started_at: Optional[float] = None


def parse(text: str) -> LinkNote:
    """``REASON WARNED REQUEUED NEXT HOST START`` (``-`` for a missing field)."""
    parts = (text.split() + ["-"] * 6)[:6]

    def number(s: str) -> Optional[float]:
        try:
            return float(s)
        except ValueError:
            return None

    def word(s: str) -> str:
        return "" if s == "-" else s

    return LinkNote(parts[0], number(parts[1]), number(parts[2]), word(parts[3]), word(parts[4]), text.strip(),
                    number(parts[5]))


def ended_status(job_id: str, note: LinkNote, status: NativeStatus) -> NativeStatus:
    """The status a task ends with when its run's note names no follow-up: the warning's reason (TIMEOUT,
    PREEMPTED, or CANCELLED when the folder was marked cancelled) when it was one, else what the scheduler said."""
    if note.reason == "CANCELLED":  # the folder was marked cancelled (hpcbridge cancel in another process)
        return dataclasses.replace(status, job_id=job_id, state=JobState.CANCELLED,
                                   native="CANCELLED (cancelled while it ran; no follow-up job)")
    state = _ENDS.get(note.reason)
    if state is None:
        return status
    return dataclasses.replace(
        status, job_id=job_id, state=state, native=f"{note.reason} (warned; not continued by a follow-up job)"
    )


def _stamp(epoch: Optional[float]) -> str:
    return "Unknown" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def build(notes: Sequence[LinkNote], last: str, last_nodes: str = "") -> List[Attempt]:
    """One :class:`Attempt` per link: the runs that handed over (or ended warned) as their notes say, then the last
    link (``last``: how it ended, ``done``, ``FAILED``, a scheduler state) when no note covers it."""
    out: List[Attempt] = []
    for note in notes:
        end = note.requeued_at if note.requeued_at is not None else note.warned_at
        out.append(Attempt(note.host, _stamp(note.started_at), _stamp(end), note.reason or "SIGNALLED", note.text,
                           note.warned_at, note.requeued_at))
    if not notes or notes[-1].next_id:  # the last link, which wrote no note: its times are not known here
        out.append(Attempt(last_nodes, "Unknown", "Unknown", last, last))
    return out


# -- the submission's side ----------------------------------------------------------------------------------------
class _Host(Protocol):
    @property
    def transport(self) -> Transport: ...

    @property
    def lock(self) -> ContextManager[Any]: ...


class Submission(Protocol):
    """What the chain reads and keeps of a submission (:class:`hpcbridge.submission.Submission` is one)."""

    job_id: str
    paths: JobFolder
    jobs: List[List[Job]]
    follow_ups: List[str]
    link_notes: Dict[int, LinkNote]
    cancelling: bool

    @property
    def backend(self) -> _Host: ...


def live_id(sub: Submission) -> str:
    """The id of the chain's newest link (the first id while nothing was continued)."""
    return sub.follow_ups[-1] if sub.follow_ups else sub.job_id


def follow(sub: Submission, task: int, status: NativeStatus) -> Optional[NativeStatus]:
    """The live link of ``task`` ended (``status``) without a complete result. None: its note names a follow-up job,
    which is the live link now (keep polling); else the status to end the task with."""
    run = len(sub.follow_ups)
    note = sub.link_notes.get(run)
    if note is None:
        path = sub.paths.run_note(task, run)
        try:
            data = sub.backend.transport.read_files([path]).get(path)
        except Exception as exc:  # asked again next tick
            log.warning("hpcbridge: could not read %s, will retry: %s", path, exc)
            return None
        if data is None:
            return status  # not warned: the run ended as the scheduler says
        note = sub.link_notes[run] = parse(data.decode("utf-8", "replace"))
    if note.next_id and not sub.cancelling:
        log.info("hpcbridge: job %s: run %d continues as job %s", sub.job_id, run + 1, note.next_id)
        sub.follow_ups.append(note.next_id)
        for job in sub.jobs[task]:
            if not job.done():
                job.state = JobState.PENDING
                job.native_state = f"PENDING (follow-up job {note.next_id})"
        return None
    return ended_status(sub.job_id, note, status)


def notes_of(sub: Submission, task: int) -> List[LinkNote]:
    """The notes of the chain's links, oldest first, read now where the poller did not (a result came before it
    followed the chain: the follow-ups write their results in the same folder); the ids they name are added to
    ``sub.follow_ups``."""
    out: List[LinkNote] = []
    for run in range(len(sub.follow_ups) + 64):  # one link per requeue: never more than the requeue allowed
        note = sub.link_notes.get(run)
        if note is None:
            path = sub.paths.run_note(task, run)
            try:
                data = sub.backend.transport.read_files([path]).get(path)
            except Exception as exc:  # the runs are a record, never a reason to fail a job
                log.warning("hpcbridge: could not read the runs of %s: %s", sub.job_id, exc)
                break
            if data is None:
                break
            note = sub.link_notes[run] = parse(data.decode("utf-8", "replace"))
        out.append(note)
        if not note.next_id:
            break
        if len(sub.follow_ups) == run:
            sub.follow_ups.append(note.next_id)
    return out


def attempts_of(sub: Submission, task: int, last: str, last_nodes: str) -> List[Attempt]:
    """``job.attempts`` of a chained task: one per link."""
    return build(notes_of(sub, task), last, last_nodes)


def before_cancel(sub: Submission) -> None:
    """Mark the job cancelled in its folder (``ckpt/cancelled``) before it is cancelled: a batch shell that the
    cancel warns submits no follow-up job, or deletes the one it just submitted."""
    with sub.backend.lock:  # the poller follows the chain under it too
        notes_of(sub, 0)  # the links the poller has not followed yet (attach() in a new process): cancel the live one
        sub.cancelling = True
    mark_cancelled(sub.backend.transport, [sub.paths.path])


def cancel_failed(sub: Submission) -> None:
    """The cancel command failed: take the mark back, so that the job goes on (and hands over) as before."""
    with sub.backend.lock:
        sub.cancelling = False
    try:
        sub.backend.transport.run(["rm", "-f", sub.paths.requeue_cancelled])
    except Exception as exc:
        log.warning("hpcbridge: could not take back the cancel mark of %s: %s", sub.job_id, exc)


def after_cancel(sub: Submission, task: int) -> List[str]:
    """The follow-up job the cancelled link submitted before it saw the mark, if its note names one: to cancel too."""
    run = len(sub.follow_ups)
    path = sub.paths.run_note(task, run)
    try:
        data = sub.backend.transport.read_files([path]).get(path)
    except Exception:
        return []
    next_id = parse(data.decode("utf-8", "replace")).next_id if data else ""
    return [next_id] if next_id else []



def live_links(transport: Transport, rows: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    """``(first id, job folder)`` of plain jobs -> the id of each one's newest link, read from the runs' notes in the
    folders (one read per link level, for every job at once): for ``hpcbridge status``, which asks the scheduler
    without a submission to follow the chain. A job whose first run was not continued keeps its id."""
    live = {first: first for first, _ in rows}
    todo = {first: (JobFolder(folder), 0) for first, folder in rows}
    while todo:
        paths = {where.run_note(0, run): first for first, (where, run) in todo.items()}
        try:
            read = transport.read_files(list(paths))
        except Exception as exc:  # the first ids stand
            log.warning("hpcbridge: could not read the runs' notes: %s", exc)
            break
        nxt: Dict[str, Tuple[JobFolder, int]] = {}
        for path, data in read.items():
            first = paths[path]
            note = parse(data.decode("utf-8", "replace"))
            where, run = todo[first]
            if note.next_id and run < 64:
                live[first] = note.next_id
                nxt[first] = (where, run + 1)
        todo = nxt
    return live


def mark_cancelled(transport: Transport, folders: Sequence[str]) -> None:
    """Write the cancel mark (``ckpt/cancelled``) into each job folder, before its chain is cancelled from outside a
    submission (``hpcbridge cancel``): a batch shell that the cancel warns then submits no follow-up job, or deletes
    the one it just submitted. A folder that cannot be marked is only logged: the cancel goes ahead."""
    for folder in folders:
        where = JobFolder(folder)
        try:
            transport.makedirs(where.checkpoint_dir)
            transport.write_files({where.requeue_cancelled: b"cancelled\n"})
        except Exception as exc:
            log.warning("hpcbridge: could not mark %s cancelled: %s", folder, exc)

