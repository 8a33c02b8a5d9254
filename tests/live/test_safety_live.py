"""A result file someone else could have written is refused, never unpickled, on the live cluster: a job whose
folder is made group-writable while it runs fails with the refusal, over the local transport (site "testcluster",
the login side) and over SSH (site "testcluster-ssh", from alice's laptop: the folders' owners and modes come in
the same tar stream as the result). Made private again, the job's result is read by ``attach``.

The decision is unit-tested in tests/unit/test_result_refusal.py, the transports' reports in
tests/local/test_local_result_refusal.py and tests/unit/test_ssh_loopback.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hpcbridge import attach
from hpcbridge.errors import UntrustedResultError
from hpcbridge.store import JobFolder

if TYPE_CHECKING:
    from conftest import LiveCluster

REPO = Path(__file__).resolve().parents[2]
ADVICE = ("hpcbridge makes job folders 0700 and their files 0600; if nobody else wrote there, make it private again "
          "(chmod go-w {}) and attach the job again (hpcbridge.attach), else submit the job again")


def expected(job_id: str, folder: str, uid: int) -> str:
    result = JobFolder(folder).result(0, 0)
    return (f"job {job_id}: its result {result} was not unpickled, because someone other than you could have written "
            f"it (unpickling runs code): the job folder {folder} is group-writable (mode 0770, owner uid {uid}: you). "
            + ADVICE.format(folder))


def wait_for(started: str, go: str, value: Any, timeout: float = 120) -> Any:
    """In the job: say it started, then wait for ``go``."""
    open(started, "w").close()
    deadline = time.time() + timeout
    while not os.path.exists(go):
        if time.time() > deadline:
            raise TimeoutError(go)
        time.sleep(0.1)
    return value


def test_a_job_folder_made_group_writable_while_it_runs_is_refused(
    cluster: LiveCluster, ex: Any, cluster_workdir: Path
) -> None:
    before = cluster.squeue_ids()
    started, go = cluster_workdir / "started", cluster_workdir / "go"
    job = ex.submit(wait_for, str(started), str(go), "the value")
    deadline = time.monotonic() + 120
    while not started.exists():
        assert time.monotonic() < deadline, f"job {job.job_id} never started"
        time.sleep(0.2)
    os.chmod(job.folder, 0o770)  # a careless `chmod -R g+w` of the workdir, while the job runs
    go.touch()
    with pytest.raises(UntrustedResultError) as info:
        job.result(timeout=120)
    assert str(info.value) == expected(job.job_id, job.folder, os.getuid())
    assert os.path.exists(JobFolder(job.folder).result(0, 0))  # the job wrote it: it was read and refused
    assert cluster.wait_job(job.job_id, timeout=120).state == "COMPLETED"  # the job itself went well
    assert cluster.squeue_ids() - before == set()
    os.chmod(job.folder, 0o700)  # the advice: private again, then attach
    assert attach(job.job_id, site="testcluster").result(timeout=120) == "the value"


def test_over_ssh_the_folder_facts_come_with_the_result_and_it_is_refused(cluster: LiveCluster) -> None:
    r = cluster.laptop_python(r'''
import json, os, time, uuid
from hpcbridge import Executor, attach, errors
from hpcbridge.sites import load_site

def wait_for(started, go, value, timeout=120):
    open(started, "w").close()
    deadline = time.time() + timeout
    while not os.path.exists(go):
        if time.time() > deadline:
            raise TimeoutError(go)
        time.sleep(0.1)
    return value

site = load_site("testcluster-ssh", env={"PYTHONPATH": "__REPO__"})
ex = Executor(site=site, walltime="00:05:00")
t = ex._backend.transport
gate = t.expanduser("~/.hpcbridge/safety-" + uuid.uuid4().hex[:8])  # cluster-side: the laptop sees none of it
t.makedirs(gate)
job = ex.submit(wait_for, gate + "/started", gate + "/go", "over ssh")
deadline = time.time() + 120
while "started" not in t.listdir(gate):
    assert time.time() < deadline, "the job never started"
    time.sleep(0.2)
t.run(["chmod", "770", job.folder])
t.write_files({gate + "/go": b""})
try:
    job.result(timeout=120)
    refused = None
except errors.UntrustedResultError as exc:
    refused = [str(exc), list(exc.paths)]
t.run(["chmod", "700", job.folder])
value = attach(job.job_id, site=site).result(timeout=120)
t.remove_tree(gate)
print("RESULT " + json.dumps({"job_id": job.job_id, "folder": job.folder, "refused": refused, "value": value,
                              "uid": int(t.run(["id", "-u"]).stdout)}), flush=True)
'''.replace("__REPO__", str(REPO)), timeout=300)
    assert r["refused"] == [expected(r["job_id"], r["folder"], r["uid"]), [r["folder"]]]
    assert r["uid"] == os.getuid()  # alice on the cluster (the laptop's alice has her own uid)
    assert r["value"] == "over ssh"
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"
