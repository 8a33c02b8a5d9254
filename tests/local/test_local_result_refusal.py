"""A result file someone else could have written is refused, never unpickled: real files and real jobs of the
``local`` site (the local transport's owners and modes, the poller's and attach's reads). The decision itself is in
tests/unit/test_result_refusal.py; the cluster's, over the local and the SSH transport, in
tests/live/test_safety_live.py."""

import os
import time

import pytest

from hpcbridge import Executor, attach
from hpcbridge.errors import UntrustedResultError
from hpcbridge.store import JobFolder
from hpcbridge.transport.base import Owner
from hpcbridge.transport.local import LocalTransport

ADVICE = ("hpcbridge makes job folders 0700 and their files 0600; if nobody else wrote there, make it private again "
          "(chmod go-w {}) and attach the job again (hpcbridge.attach), else submit the job again")


def refused(job_id, result, what):
    return (f"job {job_id}: its result {result} was not unpickled, because someone other than you could have "
            f"written it (unpickling runs code): {what}")


def wait_for(started, path, value, timeout=60):
    open(started, "w").close()
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)
    return value


def wait_until(condition, timeout=30):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def ex(tmp_path):
    return Executor(site="local", folder=str(tmp_path / "jobs"))


def test_the_local_transport_reports_owner_and_mode_of_files_read_and_of_folders(tmp_path):
    folder = tmp_path / "job"
    (folder / "res").mkdir(parents=True, mode=0o700)
    folder.chmod(0o750)
    (folder / "res" / "0.0.pkl").write_bytes(b"zero")
    (folder / "res" / "0.0.pkl").chmod(0o620)
    os.symlink("/etc/passwd", folder / "res" / "1.0.pkl")
    os.mkfifo(folder / "res" / "2.0.pkl")  # in a file's place: left out, and it does not hang the read
    paths = [str(folder / "res" / f"{i}.0.pkl") for i in range(4)]
    got = LocalTransport().read_with_owners(paths, [str(folder), str(folder / "res"), str(tmp_path / "gone")])
    me = os.getuid()
    assert got.uid == me
    assert got.files == {paths[0]: b"zero", paths[1]: open("/etc/passwd", "rb").read()}
    passwd = os.stat("/etc/passwd")
    assert got.owners == {str(folder): Owner(me, 0o750), str(folder / "res"): Owner(me, 0o700),
                          paths[0]: Owner(me, 0o620), paths[1]: Owner(passwd.st_uid, passwd.st_mode & 0o7777)}


def test_a_job_folder_made_group_writable_while_the_job_runs_is_refused_then_attach_reads_it(ex, tmp_path):
    started, go = tmp_path / "started", tmp_path / "go"
    job = ex.submit(wait_for, str(started), str(go), "the value")
    wait_until(started.exists)
    os.chmod(job.folder, 0o770)  # what a careless `chmod -R g+w` on the workdir does
    go.touch()
    with pytest.raises(UntrustedResultError) as info:
        job.result(timeout=60)
    result = JobFolder(job.folder).result(0, 0)
    assert str(info.value) == refused(job.job_id, result, f"the job folder {job.folder} is group-writable (mode 0770, "
                                      f"owner uid {os.getuid()}: you). " + ADVICE.format(job.folder))
    assert os.path.exists(result)  # it was there, read, and refused
    # the advice works: made private again, the job's result is read by attach
    os.chmod(job.folder, 0o700)
    assert attach(job.job_id, site="local").result(timeout=60) == "the value"


def test_a_result_file_made_group_writable_before_it_is_read_is_refused(ex):
    job = ex.submit(pow, 2, 5)
    assert job.result(timeout=60) == 32
    result = JobFolder(job.folder).result(0, 0)
    assert os.stat(result).st_mode & 0o777 == 0o600 and os.stat(job.folder).st_mode & 0o777 == 0o700
    os.chmod(result, 0o660)
    with pytest.raises(UntrustedResultError) as info:
        attach(job.job_id, site="local").result(timeout=60)  # a new process would read it again: so does attach
    assert str(info.value) == refused(job.job_id, result, f"the result file {result} is group-writable (mode 0660, "
                                      f"owner uid {os.getuid()}: you). " + ADVICE.format(result))


def test_a_result_file_of_another_user_is_refused(ex, tmp_path):
    job = ex.submit(pow, 3, 3)
    assert job.result(timeout=60) == 27
    result = JobFolder(job.folder).result(0, 0)
    if os.getuid() == 0:  # root can give a file away: a copy of the result owned by nobody
        other = tmp_path / "planted.pkl"
        other.write_bytes(open(result, "rb").read())
        os.chown(other, 65534, 65534)
    else:  # a file of root's, in the result's place
        other = "/etc/passwd"
    os.unlink(result)
    os.symlink(other, result)
    st = os.stat(result)
    assert st.st_uid != os.getuid()
    with pytest.raises(UntrustedResultError) as info:
        attach(job.job_id, site="local").result(timeout=60)
    assert str(info.value) == refused(
        job.job_id, result, f"the result file {result} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}; "
        f"mode {st.st_mode & 0o7777:04o}). hpcbridge makes job folders 0700 and their files 0600; submit the job "
        "again, and find out who changed its folder")
    assert info.value.paths == (result,)
