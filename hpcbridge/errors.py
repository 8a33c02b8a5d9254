"""Errors raised by hpcbridge.

Every error derives from :class:`HpcBridgeError` and its message says what to do next.

Tree::

    HpcBridgeError
    ├── ConfigError                 bad site-config, unknown site, unknown key
    │   └── UnknownSiteError
    ├── ResourceError               unknown resource name, nonsense walltime/memory, over a limit
    │   └── HostlistError           a Slurm hostlist expression that cannot be read
    ├── SerializationError          the function or an argument cannot be pickled
    ├── RemoteEnvironmentError      cluster-side python / cloudpickle / hpcbridge missing or mismatched
    │   └── ContainerError          a job's image or container runtime missing, or the image cannot run the worker
    ├── UsageError                  the API used in a way that cannot work (a nested batch() block)
    ├── WalltimeWarning             (a warning, also a UserWarning) a job asks for more time than is left of the
    │                               allocation this process runs inside (a notebook server that is a batch job)
    ├── JobNotFoundError            attach / the CLI: no job by that id (exit code 4 in the CLI)
    ├── RendezvousError             in the job: no master address or port could be agreed
    ├── UserCommandError            in the job: the command or script of ``hpcbridge submit`` exited non-zero
    ├── StopForRequeue              in the job: the call was warned, saved its checkpoint and leaves to be requeued
    ├── CommandError                a command failed (argv, exit_code, stdout, stderr)
    │   └── SchedulerError          the scheduler refused or failed (sbatch, sacct, qsub ...)
    ├── TransportError              the transport could not run a command or move a file (``maybe_ran``)
    │   ├── CommandTimeoutError     a command did not finish in time (it may have done its work)
    │   ├── HostUnreachableError    SSH: no connection to the host (DNS, refused, timed out, bastion failed)
    │   ├── AuthenticationError     SSH: the server refused every key / answer
    │   ├── HostKeyError            SSH: the host key cannot be trusted
    │   │   ├── UnknownHostKeyError     not in known_hosts (the message shows the fingerprint and the fix)
    │   │   └── HostKeyChangedError     differs from known_hosts (possible man-in-the-middle)
    │   ├── ConnectionLostError     SSH: the connection dropped and the operation could not be finished
    │   └── RemoteCommandError      a transport operation failed on the remote side (also a CommandError)
    └── JobError                    a job did not produce a result
        ├── RemoteError             the callable raised, and its exception could not be rebuilt here
        ├── UntrustedResultError    a result file someone else could have written: refused, never unpickled
        ├── JobKilledError          the scheduler ended the job (state, stderr tail)
        │   ├── JobTimeoutError
        │   ├── JobOutOfMemoryError
        │   ├── JobNodeFailError
        │   ├── JobPreemptedError
        │   └── JobCancelledError   (also a concurrent.futures.CancelledError)
        │       └── JobDependencyError  cancelled before it started: a job it was to run after did not succeed
        └── JobLostError            the job left the scheduler without a result
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Optional, Sequence, Tuple


class HpcBridgeError(Exception):
    """Root of every hpcbridge error."""


class ConfigError(HpcBridgeError):
    """A site-config or option is wrong."""


class UnknownSiteError(ConfigError):
    """No site by that name."""


class ResourceError(HpcBridgeError, ValueError):
    """A resource request is invalid (unknown name, bad value, over a limit)."""


class HostlistError(ResourceError):
    """A Slurm hostlist expression (``node[01-04,07]``) that cannot be read."""


class SerializationError(HpcBridgeError, TypeError):
    """The function or one of its arguments cannot be pickled."""


class RemoteEnvironmentError(HpcBridgeError):
    """The cluster-side Python environment cannot run hpcbridge jobs."""


class ContainerError(RemoteEnvironmentError):
    """A job's container cannot run it: the image or the runtime is missing on the cluster, or the image lacks what
    the worker needs (docs/containers.md). Raised before anything is submitted."""


class UsageError(HpcBridgeError, RuntimeError):
    """The API was used in a way that cannot work (a ``batch()`` block inside another)."""


class WalltimeWarning(HpcBridgeError, UserWarning):
    """Warned, not raised (once per process): a job's walltime is longer than what is left of the allocation this
    process runs inside (:mod:`hpcbridge.here`)."""


class JobNotFoundError(HpcBridgeError, LookupError):
    """No job by that id: not in this machine's registry, or not known to the scheduler."""


class RendezvousError(HpcBridgeError, RuntimeError):
    """In the job: the ranks could not agree on a master address and port."""


class UserCommandError(HpcBridgeError):
    """The command (or script) of a ``hpcbridge submit`` job exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        super().__init__(f"{' '.join(self.argv)} exited with status {returncode}")

    def __reduce__(self) -> Tuple[Any, ...]:
        # raised in the job and unpickled here: rebuilt from its fields (the default would pass only the message)
        return (type(self), (self.argv, self.returncode))


class StopForRequeue(HpcBridgeError):
    """In the job: raised by :func:`hpcbridge.checkpoint.save` once the job has been warned (``should_stop()``),
    after the state is saved; the worker then leaves without a result and the batch shell requeues the job
    (docs/requeue.md). Let it propagate: catching it keeps the call running until the scheduler kills it."""


class TransportError(HpcBridgeError):
    """The transport failed to run a command or move a file.

    ``maybe_ran``: True when the command had already been sent, so it may or may not have run on the cluster side
    (a submission is then looked up by its tag, never simply sent again).
    """

    def __init__(self, message: str, *, maybe_ran: bool = False) -> None:
        super().__init__(message)
        self.maybe_ran = maybe_ran


class HostUnreachableError(TransportError):
    """No connection to the host: unknown name, refused, timed out, or the bastion could not forward."""


class AuthenticationError(TransportError):
    """The SSH server refused every key, passphrase or keyboard-interactive answer."""


class HostKeyError(TransportError):
    """The host's key cannot be trusted; nothing was sent."""


class UnknownHostKeyError(HostKeyError):
    """The host is not in known_hosts (and StrictHostKeyChecking is not accept-new/no)."""


class HostKeyChangedError(HostKeyError):
    """The host sent a key other than the one in known_hosts: possibly a man-in-the-middle."""


class CommandTimeoutError(TransportError):
    """A command did not finish in time. It had started, so it may have done its work (``maybe_ran``): a
    submission that timed out is looked up by its tag before it is ever sent again."""

    def __init__(self, message: str, *, maybe_ran: bool = True) -> None:
        super().__init__(message, maybe_ran=maybe_ran)


class ConnectionLostError(TransportError):
    """The connection dropped and the operation could not be finished (``maybe_ran``: after the command was
    sent)."""


class CommandError(HpcBridgeError):
    """A command exited non-zero.

    Attributes carry the argv, exit code and output so callers can act on them.
    """

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        exit_code: Optional[int] = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        detail = f"\n  command: {' '.join(self.argv)}" if self.argv else ""
        if exit_code is not None:
            detail += f"\n  exit code: {exit_code}"
        if stderr.strip():
            detail += "\n  stderr: " + last_lines(stderr, 20).replace("\n", "\n          ")
        super().__init__(message + detail)
        self.message = message


class SchedulerError(CommandError):
    """The scheduler refused a request or could not be queried."""


class RemoteCommandError(CommandError, TransportError):
    """A transport operation (mkdir, file transfer, listing) failed on the remote side (it ran: not a drop)."""


class JobError(HpcBridgeError):
    """A job did not produce a result."""

    def __init__(self, message: str, *, job_id: str = "", state: str = "", stderr_tail: str = "") -> None:
        self.job_id = job_id
        self.state = state
        self.stderr_tail = stderr_tail
        text = message
        if stderr_tail.strip():
            text += "\n--- stderr (last lines) ---\n" + stderr_tail.rstrip()
        super().__init__(text)


class RemoteError(JobError):
    """The callable raised an exception whose type could not be rebuilt on this side.

    ``rank``: the rank that raised, in a job with several ranks (a launcher); None for a single-process job.
    """

    def __init__(
        self, message: str, *, type_name: str, remote_traceback: str, rank: Optional[int] = None, **kw: str
    ) -> None:
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        self.rank = rank
        super().__init__(message, **kw)


class UntrustedResultError(JobError):
    """A result file that someone other than the user could have written (its job folder, its ``res/`` folder or
    the file itself belongs to another user or is group- or world-writable): it is not unpickled, since unpickling
    runs code. ``paths``: the paths at fault."""

    def __init__(self, message: str, *, paths: Sequence[str] = (), **kw: str) -> None:
        self.paths = tuple(paths)
        super().__init__(message, **kw)


class JobKilledError(JobError):
    """The scheduler ended the job before it produced a result."""


class JobTimeoutError(JobKilledError):
    """The job hit its walltime."""


class JobOutOfMemoryError(JobKilledError):
    """The job exceeded its memory."""


class JobNodeFailError(JobKilledError):
    """A node of the job failed."""


class JobPreemptedError(JobKilledError):
    """The job was preempted and not requeued."""


class JobCancelledError(JobKilledError, concurrent.futures.CancelledError):
    """The job was cancelled outside this process (scancel, qdel, an admin)."""


class JobDependencyError(JobCancelledError):
    """The scheduler cancelled the job before it started: a job it was to run after (``after=``) did not complete
    successfully. ``after``: the ids it waited for."""

    def __init__(self, message: str, *, after: Sequence[str] = (), **kw: str) -> None:
        self.after = tuple(after)
        super().__init__(message, **kw)


class JobLostError(JobError):
    """The job left the scheduler without writing a result."""


class RemoteTraceback(Exception):
    """Carries the remote traceback text; set as ``__cause__`` of a re-raised remote exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def last_lines(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text`` (the tail of a command's or a job's stderr that an error shows)."""
    return "\n".join(text.rstrip().splitlines()[-lines:])
