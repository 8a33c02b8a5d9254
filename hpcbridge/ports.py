"""Node-local TCP port claims: a free master port that no other running job on this node was given.

A claim is a file in a directory shared by every user (``/dev/shm/hpcbridge-ports``), locked with flock for as
long as the claiming process (and what it execs into) lives; :func:`choose_port` claims, then bind-tests. Used by
the launch step (:mod:`hpcbridge.rendezvous`) and by ``hpcbridge.environment()``: standard library only.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from typing import Dict, Optional, Tuple

from .errors import RendezvousError

#: A port claim lasts exactly as long as the lock on its file (see _claim). This is the lifetime of a claim
#: an older hpcbridge made (no lock, so judged by age and pid), and the age after which this user's unused claim
#: files are deleted (younger ones are taken over in place).
PORT_CLAIM_TTL_S = 600.0
_CLAIM_MARK = "flock"  # the last field of a claim that holds by its lock; a claim without it is an older one's
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_held: Dict[int, int] = {}  # port -> the locked descriptor of a claim this process holds
DEFAULT_PORT_RANGE = (20000, 32767)  # below Linux's ephemeral range (32768-60999): no outgoing socket holds it


def choose_port(
    port_range: Tuple[int, int] = DEFAULT_PORT_RANGE,
    *,
    job_id: str = "",
    claim_dir: Optional[str] = None,
    attempts: int = 200,
) -> int:
    """A TCP port that binds on this node now and that no other running hpcbridge job on this node was given.

    Candidates are drawn at random from ``port_range``; each is claimed with a locked file in a node-local
    directory shared by every user (``/dev/shm/hpcbridge-ports``), then bind-tested on every address (IPv4 and
    IPv6, with SO_REUSEADDR as torch's store binds: see :func:`port_is_free`). Two jobs starting together on one
    node therefore never get the same port, unlike a port derived from the job id. The claim is held by this
    process and survives its exec (the launch step becomes the launcher): it ends when they have exited. With
    every port of the range taken it raises :class:`RendezvousError` (it does not wait for one).

    ``claim_dir``: where the claims are (default ``/dev/shm/hpcbridge-ports``, else ``/tmp/hpcbridge-ports``); the
    in-job callers pass ``$HPCBRIDGE_PORT_CLAIM_DIR`` (:data:`hpcbridge.jobenv.CLAIM_DIR_VAR`).
    """
    import random

    lo, hi = port_range
    if not (0 < lo <= hi < 65536):
        raise RendezvousError(f"port range {lo}-{hi} is not within 1-65535")
    claims = _claim_dir(claim_dir)
    if claims:
        _clean_stale_claims(claims)
    # who has the claim (one record for every port tried: informational, liveness is the lock's)
    record = (
        f"{job_id or '-'} {socket.gethostname()} {os.getpid()} {time.time():.3f} {_pid_namespace()} {_CLAIM_MARK}\n"
    ).encode()
    rng = random.SystemRandom()
    tried = set()
    for _ in range(attempts):
        port = rng.randint(lo, hi)
        if port in tried:
            continue
        tried.add(port)
        if claims and not _claim(claims, port, record):
            continue
        if port_is_free(port):
            return port
        if claims:
            _unclaim(claims, port)
    raise RendezvousError(
        f"no free TCP port found in {lo}-{hi} on {socket.gethostname()} after {len(tried)} tries (each one "
        "in use or claimed by another running job); widen [distributed] master_port_min/master_port_max in "
        "the site-config to a range open on the compute nodes"
    )


def port_is_free(port: int) -> bool:
    """True if ``port`` binds on every IPv4 (and, where there is IPv6, every IPv6) address right now.

    With SO_REUSEADDR, as torch's TCPStore (c10d) binds its port: a port whose last connections are in TIME_WAIT
    (for 60 s after a job's store closed) is free for the next store, and only a live listener makes it busy."""
    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, any_addr in families:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this node
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((any_addr, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue
            return False
        finally:
            sock.close()
    return True


def _claim_dir(preferred: Optional[str]) -> Optional[str]:
    for base in ([preferred] if preferred else ["/dev/shm", "/tmp"]):
        path = os.path.join(base, "hpcbridge-ports") if not preferred else base
        try:
            os.mkdir(path, 0o1777)
            os.chmod(path, 0o1777)  # umask: every user's jobs claim here
        except FileExistsError:
            pass
        except OSError:
            continue
        if os.path.isdir(path) and not os.path.islink(path) and os.access(path, os.W_OK | os.X_OK):
            return path
    return None


def _claim(claims: str, port: int, record: bytes) -> bool:
    """Claim ``port`` for this process and what it execs into (the file says ``record``: who has it); False while
    another job holds it.

    A claim is the file ``claims/PORT`` locked with flock(LOCK_EX) on a descriptor this process keeps open and
    inheritable: the claim lasts until the launch step (which execs the launcher, keeping the descriptor) or
    the worker has exited, however it ends (the kernel drops the lock), and no longer. Whether a claim is live
    is only ever asked of the lock, and the lock is also how a claim is taken, so there is no check-then-act
    window: a new claim is locked before it appears under its name (written under a temporary name, then
    hard-linked to ``PORT``, which fails if that exists); a claim nobody holds is taken over by locking that
    same file with LOCK_NB (of any number of jobs trying at once exactly one gets it), never by deleting the
    name and creating it again (then a second job, having seen the same dead claim, deletes the first one's
    fresh claim and both get the port). Under the lock the name must still be that file (a cleanup or an
    unclaim may have removed it meanwhile: then look again). flock needs only read access, so another user's
    claim in the sticky directory is taken over too once its job has ended, as it is (it cannot be rewritten).
    """
    path = os.path.join(claims, str(port))
    for _ in range(5):  # each round ends in a claim, a live holder, or a file that changed under us (again)
        try:
            fd = _new_claim(claims, path, record)
        except OSError:
            return True  # no claims here (no flock or hard links on this filesystem): rely on the bind test alone
        if fd is None:  # the name exists: ours if nobody holds it
            fd, changed = _lock_unheld(path)
            if fd is None:
                if changed:
                    continue
                return False
            if not _unheld_claim_is_stale(fd):  # an older hpcbridge's claim that is live by its rules
                os.close(fd)
                return False
            try:  # ours: say who has it now (another user's file is read-only to us and stays as it is)
                os.ftruncate(fd, 0)
                os.pwrite(fd, record, 0)
            except OSError:
                pass
        os.set_inheritable(fd, True)  # Python opens with O_CLOEXEC: the lock must survive the exec of the launcher
        _held[port] = fd
        return True
    return False


def _new_claim(claims: str, path: str, record: bytes) -> Optional[int]:
    """A new claim of ``path``, locked before it appears under that name; None if the name exists."""
    import fcntl

    tmp = os.path.join(claims, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: other users' jobs must be able to open it to test the lock
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file nobody else has opened: never blocks
        os.write(fd, record)
        os.link(tmp, path)  # atomic: fails if the name exists (lsof names the descriptor by `tmp`, deleted)
        linked = True
    except FileExistsError:
        linked = False
    except BaseException:
        os.close(fd)
        _remove(tmp)
        raise
    _remove(tmp)
    if not linked:
        os.close(fd)
        return None
    return fd


def _lock_unheld(path: str) -> Tuple[Optional[int], bool]:
    """(descriptor, changed): the claim file ``path`` locked by us, because nobody else held it; (None, False)
    while someone holds it or when it is no claim we can test (a symlink, a FIFO, unreadable, no flock here);
    (None, True) when it was removed or replaced while we looked."""
    import fcntl

    flags = _NOFOLLOW | os.O_NONBLOCK  # O_NONBLOCK: a FIFO planted under the name must not hang us
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags)
        except PermissionError:  # another user's claim: flock needs only read access
            fd = os.open(path, os.O_RDONLY | flags)
    except FileNotFoundError:
        return None, True
    except OSError:
        return None, False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        same = _same_file(fd, path)
    except FileNotFoundError:
        os.close(fd)
        return None, True
    except OSError:  # BlockingIOError: its job is running
        os.close(fd)
        return None, False
    if not same:
        os.close(fd)
        return None, True
    return fd, False


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed and made again meanwhile); OSError when
    ``path`` is gone."""
    st, now = os.fstat(fd), os.lstat(path)
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _unheld_claim_is_stale(fd: int) -> bool:
    """Of a claim file we have locked: True if it is free. Ours are (nobody held the lock); an older hpcbridge's
    claim, which it never locked, holds for PORT_CLAIM_TTL_S or until the process that made it has exited."""
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace")
        mtime = os.fstat(fd).st_mtime
    except OSError:
        return False
    fields = text.split()
    if len(fields) == 6 and fields[5] == _CLAIM_MARK:
        return True
    return time.time() - mtime >= PORT_CLAIM_TTL_S or _claim_owner_gone(text)


def _claim_owner_gone(text: str) -> bool:
    """True only when the claim was made on this host, in this pid namespace, by a process that is gone.

    Anything else (another host's claim in a shared directory, another pid namespace, an older claim format,
    a process of another user: kill says EPERM) counts as alive, leaving the TTL to end the claim.
    """
    fields = text.split()
    if len(fields) != 5 or not fields[2].isdigit():
        return False
    _, host, pid, _, pidns = fields
    if host != socket.gethostname() or pidns != _pid_namespace():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. pid:[4026531836]
    except OSError:
        return "-"


def _unclaim(claims: str, port: int) -> None:
    """Give up a claim this process holds: its file goes (while still locked, so nobody is taking it over)."""
    fd = _held.pop(port, None)
    if fd is None:
        return
    path = os.path.join(claims, str(port))
    try:
        if _same_file(fd, path):
            os.unlink(path)  # another user's file taken over stays (sticky directory): it is free once closed
    except OSError:
        pass
    os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _clean_stale_claims(claims: str, limit: int = 1000) -> None:
    """Delete this user's claim files that are free and unused for PORT_CLAIM_TTL_S (and temporary files left by
    a crash). Younger free claims are left to be taken over in place: deleting one races with nothing, but a
    job testing its lock while we hold it would skip the port. Other users' files stay (the directory is sticky);
    they are taken over in place once free."""
    now = time.time()
    uid = os.getuid()
    try:
        with os.scandir(claims) as it:
            for i, entry in enumerate(it):
                if i >= limit:
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_uid != uid or now - st.st_mtime < PORT_CLAIM_TTL_S:
                    continue
                fd, _ = _lock_unheld(entry.path)
                if fd is None:
                    continue
                if entry.name.startswith(".") or _unheld_claim_is_stale(fd):
                    _remove(entry.path)  # under the lock: see _unclaim
                os.close(fd)
    except OSError:
        pass
