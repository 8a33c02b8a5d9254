"""Node-local port claims (hpcbridge.ports): bind tests, flock claims held across exec, races, other users."""

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from injob import PY, free_port

from hpcbridge import ports
from hpcbridge.errors import RendezvousError
from hpcbridge.launchers import site_options
from hpcbridge.sites import site_from_mapping


def test_a_port_in_time_wait_is_free_for_the_next_store_and_a_listening_one_is_not():
    """As torch's TCPStore binds (SO_REUSEADDR): the connections a finished job's store closed first linger in
    TIME_WAIT for 60 s; they must not keep the next job off a narrow master_port range."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    assert not ports.port_is_free(port)  # a live listener
    served.close()  # the store's side closes first: its end of the connection goes to TIME_WAIT
    time.sleep(0.2)
    client.close()
    listener.close()
    time.sleep(0.2)
    plain = socket.socket()
    try:
        plain.bind(("0.0.0.0", port))
        pytest.skip("this kernel keeps no TIME_WAIT on the closed port; nothing to show")
    except OSError:
        pass  # a bind without SO_REUSEADDR is refused: the port is in TIME_WAIT
    finally:
        plain.close()
    assert ports.port_is_free(port)


def test_choose_port_skips_a_port_in_use_and_a_port_claimed_by_another_job(tmp_path):
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        assert not ports.port_is_free(taken)
        claims = tmp_path / "claims"
        first = ports.choose_port((taken, taken + 2), claim_dir=str(claims), job_id="job-1")
        second = ports.choose_port((taken, taken + 2), claim_dir=str(claims), job_id="job-2")
        assert taken not in (first, second) and first != second  # both free; the claim keeps them apart
        assert (claims / str(first)).read_text().startswith("job-1 ")
        # the bind-tested-and-busy port's claim is gone again, and so is every temporary file
        assert sorted(os.listdir(claims)) == sorted([str(first), str(second)])
        with pytest.raises(RendezvousError) as info:
            ports.choose_port((taken, taken + 2), claim_dir=str(claims), job_id="job-3", attempts=50)
        assert str(info.value) == (
            f"no free TCP port found in {taken}-{taken + 2} on {socket.gethostname()} after 3 tries (each one in "
            "use or claimed by another running job); widen [distributed] master_port_min/master_port_max in the "
            "site-config to a range open on the compute nodes"
        )
        site = site_from_mapping("golden", {"scheduler": "slurm", "python": PY, "distributed": {
            "master_port_min": taken, "master_port_max": taken + 2}})  # the keys it names
        assert site_options(site)["master_port_range"] == (taken, taken + 2)
    finally:
        busy.close()


CLAIM_AND_WAIT = (
    "import sys; from hpcbridge.ports import choose_port; "
    "lo, hi = int(sys.argv[2]), int(sys.argv[3]); "
    "print(choose_port((lo, hi), claim_dir=sys.argv[1], job_id=sys.argv[4]), flush=True); sys.stdin.read()"
)


def _claimer(claims, lo, hi, job_id):
    """A process that claims a port, prints it and lives (as a job's launch step does) until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(claims), str(lo), str(hi), job_id],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_a_claim_holds_while_its_job_lives_and_is_released_when_it_ends(tmp_path):
    port = free_port()
    proc, got = _claimer(tmp_path, port, port, "job-1")
    try:
        assert got == port
        (job, host, pid, _, _, mark) = (tmp_path / str(port)).read_text().split()
        assert (job, host, int(pid), mark) == ("job-1", socket.gethostname(), proc.pid, "flock")
        with pytest.raises(RendezvousError, match=f"no free TCP port found in {port}-{port} "):
            ports.choose_port((port, port), claim_dir=str(tmp_path), job_id="job-2")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    # its process has exited: the port is free again at once, not after PORT_CLAIM_TTL_S; the same file is
    # taken over (locked, not deleted and made again) and says who has it now
    inode = os.stat(tmp_path / str(port)).st_ino
    assert ports.choose_port((port, port), claim_dir=str(tmp_path), job_id="job-2") == port
    assert (tmp_path / str(port)).read_text().startswith("job-2 ")
    assert os.stat(tmp_path / str(port)).st_ino == inode and os.listdir(tmp_path) == [str(port)]


def test_an_older_hpcbridges_claim_whose_owner_cannot_be_checked_holds_until_its_ttl(tmp_path):
    """A claim without a lock (an older hpcbridge's) from another host in a shared directory, or from another pid
    namespace: the pid says nothing, so it holds for PORT_CLAIM_TTL_S; from here, until its pid has gone."""
    port = free_port()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a pid that has exited
    for owner in (f"j other-host {gone} 1.0 {ports._pid_namespace()}", f"j {socket.gethostname()} {gone} 1.0 x",
                  f"j {socket.gethostname()} {gone} 1.0"):
        (tmp_path / str(port)).write_text(owner + "\n")
        with pytest.raises(RendezvousError):
            ports.choose_port((port, port), claim_dir=str(tmp_path), job_id="new")
    (tmp_path / str(port)).write_text(f"j {socket.gethostname()} {gone} 1.0 {ports._pid_namespace()}\n")
    assert ports.choose_port((port, port), claim_dir=str(tmp_path), job_id="new") == port


def test_an_older_hpcbridges_expired_claim_is_taken_over(tmp_path):
    port = free_port()
    (tmp_path / str(port)).write_text("old 1 2 3\n")
    old = os.stat(tmp_path / str(port)).st_mtime - ports.PORT_CLAIM_TTL_S - 5
    os.utime(tmp_path / str(port), (old, old))
    assert ports.choose_port((port, port), claim_dir=str(tmp_path), job_id="new") == port


def test_many_concurrent_launch_steps_on_one_node_get_distinct_ports(tmp_path):
    """Eight processes choosing at the same moment from a small range, all alive at once: no two get the same
    port (each lives on after choosing, as a job's launch step does: an exited one frees its port)."""
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(tmp_path), "30000", "30015", str(i)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(8)]
    try:
        ports = [int(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert len(set(ports)) == 8 and all(30000 <= p <= 30015 for p in ports)


#: A launch step that, like every other one, found the claim of an ended job on its port, and waits (at its lock
#: call on that claim file) until all of them have found it before it takes it: the interleaving in which taking
#: over by check, delete and create gave the port to several jobs. It prints its port or its error, then lives.
RACE_FOR_A_DEAD_CLAIM = """
import fcntl, os, sys, time
from hpcbridge.errors import RendezvousError
from hpcbridge.ports import choose_port
claims, port, barrier, n, me = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
dead = os.lstat(os.path.join(claims, str(port))).st_ino
flock = fcntl.flock
def flock_when_all_are_here(fd, op):
    if os.fstat(fd).st_ino == dead and not os.path.exists(os.path.join(barrier, me)):
        open(os.path.join(barrier, me), "w").close()
        while len(os.listdir(barrier)) < n:
            time.sleep(0.005)
    return flock(fd, op)
fcntl.flock = flock_when_all_are_here
try:
    print(choose_port((port, port), claim_dir=claims, job_id=me), flush=True)
except RendezvousError as exc:
    print(exc, flush=True)
sys.stdin.read()
"""


def test_launch_steps_racing_for_the_dead_claim_of_a_one_port_range_give_it_to_exactly_one(tmp_path):
    """A 1-port range whose claim is an ended job's: 8 launch steps see it at the same time; one gets the port,
    the others the no-free-port error, though the port is free for the bind test of all of them."""
    port, n = free_port(), 8
    claims, barrier = tmp_path / "claims", tmp_path / "barrier"
    claims.mkdir()
    barrier.mkdir()
    proc, _ = _claimer(claims, port, port, "ended")
    proc.stdin.close()
    proc.wait(timeout=60)
    dead = os.stat(claims / str(port)).st_ino
    procs = [subprocess.Popen([sys.executable, "-c", RACE_FOR_A_DEAD_CLAIM, str(claims), str(port), str(barrier),
                               str(n), f"job-{i}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(n)]
    try:
        said = [p.stdout.readline().strip() for p in procs]
        assert len(os.listdir(barrier)) == n  # every one of them had found the dead claim before any took it
        winners = [i for i, line in enumerate(said) if line == str(port)]
        assert len(winners) == 1, said
        error = (f"no free TCP port found in {port}-{port} on {socket.gethostname()} after 1 tries (each one in use "
                 "or claimed by another running job); widen [distributed] master_port_min/master_port_max in the "
                 "site-config to a range open on the compute nodes")
        assert [line for i, line in enumerate(said) if i not in winners] == [error] * (n - 1)
        # taken over in place (same file), it names the winner, and it holds: a ninth job finds it claimed
        assert os.stat(claims / str(port)).st_ino == dead and os.listdir(claims) == [str(port)]
        assert (claims / str(port)).read_text().split()[:3] == [f"job-{winners[0]}", socket.gethostname(),
                                                                str(procs[winners[0]].pid)]
        with pytest.raises(RendezvousError, match="no free TCP port found"):
            ports.choose_port((port, port), claim_dir=str(claims), job_id="ninth")
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert ports.choose_port((port, port), claim_dir=str(claims), job_id="after") == port


def test_free_claims_unused_for_the_ttl_and_stray_temporary_files_are_deleted_held_ones_stay(tmp_path):
    free, held = free_port(), free_port()
    ended, _ = _claimer(tmp_path, free, free, "ended")
    ended.stdin.close()
    ended.wait(timeout=60)
    live, _ = _claimer(tmp_path, held, held, "running")
    try:
        (tmp_path / f".{free}.1.abcd1234").write_text("")  # a launch step killed between its two steps
        old = time.time() - ports.PORT_CLAIM_TTL_S - 5
        for name in os.listdir(tmp_path):
            os.utime(tmp_path / name, (old, old))
        (tmp_path / "new").mkdir()
        ports.choose_port(claim_dir=str(tmp_path / "new"))  # another directory: nothing to clean there
        assert sorted(os.listdir(tmp_path)) == sorted([str(free), str(held), f".{free}.1.abcd1234", "new"])
        other = free_port()
        assert ports.choose_port((other, other), claim_dir=str(tmp_path)) == other
        assert sorted(os.listdir(tmp_path)) == sorted([str(held), str(other), "new"])  # the running job's stays
    finally:
        live.stdin.close()
        live.wait(timeout=60)


def _as_user(uid, claims, port, job_id):
    """A forked process of user ``uid`` (umask 077) that chooses a port of ``port-port``, sends its port or its
    error and then lives, holding what it claimed, until its pipe is closed. The parent must be root."""
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()

    def run():
        mine.close()  # else closing the parent's end would not end this one's recv
        os.setgid(uid)
        os.setuid(uid)
        os.umask(0o077)
        try:
            theirs.send(ports.choose_port((port, port), claim_dir=claims, job_id=job_id))
        except RendezvousError as exc:
            theirs.send(str(exc))
        try:
            theirs.recv()
        except EOFError:
            pass

    proc = ctx.Process(target=run, daemon=True)
    proc.start()
    theirs.close()
    if not mine.poll(60):
        proc.kill()
        pytest.fail(f"the process of user {uid} said nothing in 60 s")
    return proc, mine, mine.recv()


def _end(proc, pipe):
    pipe.close()
    proc.join(timeout=60)
    if proc.exitcode is None:
        proc.kill()
    assert proc.exitcode == 0


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="acting as two users needs root (tests/run runs the root tests as root)")
def test_another_users_claim_is_never_taken_while_its_job_runs_and_is_taken_over_in_place_after(tmp_path):
    """The claim directory is sticky and shared by every user: a running job's claim holds against everyone,
    and once it has ended another user's job gets the port (flock needs only read access: the file, which it
    may not delete, does not block the port until its owner comes back)."""
    claims = tempfile.mkdtemp(prefix="hpcbridge-ports-test.", dir="/tmp")
    os.chmod(claims, 0o1777)
    port, alice, bob = free_port(), 54321, 54322
    try:
        a = _as_user(alice, claims, port, "alice-1")
        assert a[2] == port
        path = os.path.join(claims, str(port))
        assert (os.stat(path).st_uid, oct(os.stat(path).st_mode & 0o777)) == (alice, "0o644")  # despite umask 077
        b = _as_user(bob, claims, port, "bob-1")
        assert b[2].startswith(f"no free TCP port found in {port}-{port} ")  # alice's job is running: not stolen
        _end(*b[:2])
        _end(*a[:2])
        b = _as_user(bob, claims, port, "bob-2")  # alice's job has ended: bob's next job gets it
        assert b[2] == port
        assert os.stat(path).st_uid == alice and open(path).read().startswith("alice-1 ")  # her file, as it was
        a = _as_user(alice, claims, port, "alice-2")  # her own file, but bob's running job holds it
        assert a[2].startswith(f"no free TCP port found in {port}-{port} ")
        _end(*a[:2])
        _end(*b[:2])
        a = _as_user(alice, claims, port, "alice-3")
        assert a[2] == port and open(path).read().startswith("alice-3 ")
        _end(*a[:2])
    finally:
        shutil.rmtree(claims)
