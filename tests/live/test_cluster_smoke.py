"""Smoke tests that prove the live test cluster (tests/cluster/up) does what the other tests rely on.

Run as alice from the stage, e.g.
    runuser -u alice -- /opt/hpcbridge-test/venv/bin/python -m pytest -p no:cacheprovider \\
        /opt/hpcbridge-test/src/tests/live/test_cluster_smoke.py
"""

from __future__ import annotations

import ipaddress
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import LiveCluster  # tests/live/conftest.py

NODES = ("node1", "node2", "node3")
CLUSTER_NET_PREFIX = "10.77.0."


ALLREDUCE = """\
import socket
import sys
try:
    from mpi4py import MPI
except ImportError as e:
    sys.exit(f"mpi4py is not importable in {sys.executable}: {e}")
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1, op=MPI.SUM)
print(f"RANK {comm.Get_rank()} SIZE {comm.Get_size()} HOST {socket.gethostname()} SUM {total}", flush=True)
"""


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _require_mpi4py(cluster: LiveCluster) -> None:
    p = cluster.run([sys.executable, "-c", "import mpi4py"], check=False, timeout=60)
    if p.returncode != 0:
        pytest.fail(
            f"mpi4py is not installed in {sys.executable} (tests/requirements.txt; tests/stage "
            f"installs it): {p.stderr.strip()[-300:]}"
        )


def _check_allreduce(out: str) -> None:
    ranks = {}
    for m in re.finditer(r"^RANK (\d+) SIZE (\d+) HOST (\S+) SUM (\d+)$", out, re.M):
        rank, size, host, total = int(m[1]), int(m[2]), m[3], int(m[4])
        assert size == 6, out
        assert total == sum(range(1, 7)), out  # ranks 0..5 contribute rank+1: 21
        ranks[rank] = host
    assert sorted(ranks) == list(range(6)), f"expected ranks 0..5 once each:\n{out}"
    per_node = {n: sorted(r for r, h in ranks.items() if h == n) for n in NODES}
    assert all(len(r) == 2 for r in per_node.values()), f"expected 2 ranks on each node: {per_node}\n{out}"


def test_three_node_batch_job(cluster: LiveCluster, cluster_workdir: Path) -> None:
    script = _write(
        cluster_workdir / "nodes.sh",
        """\
#!/bin/bash
#SBATCH --job-name=smoke-3node --nodes=3 --ntasks-per-node=1 --time=2
#SBATCH --output=nodes-%j.out
srun bash -c 'echo "NODE $(hostname) $(hostname -I)"'
""",
    )
    jobid = cluster.sbatch(script, workdir=cluster_workdir)
    job = cluster.wait_job(jobid, timeout=300)
    out = (cluster_workdir / f"nodes-{jobid}.out").read_text()
    assert job.state == "COMPLETED" and job.exit_code == "0:0", (job, out)
    assert job.sacct["NNodes"] == "3" and job.sacct["User"] == cluster.user, job.sacct
    lines = [line.split() for line in out.splitlines() if line.startswith("NODE ")]
    assert len(lines) == 3, out
    names = {fields[1] for fields in lines}
    addrs = {fields[2] for fields in lines}
    assert names == set(NODES), out
    assert len(addrs) == 3, out
    for a in addrs:
        assert a.startswith(CLUSTER_NET_PREFIX) and ipaddress.ip_address(a), out


def test_mpi_allreduce_srun_pmix(cluster: LiveCluster, cluster_workdir: Path) -> None:
    _require_mpi4py(cluster)
    prog = _write(cluster_workdir / "allreduce.py", ALLREDUCE)
    p = cluster.run(
        [
            "srun",
            "--mpi=pmix",
            "--nodes=3",
            "--ntasks-per-node=2",
            "--time=2",
            "--job-name=smoke-pmix",
            "-D",
            str(cluster_workdir),
            sys.executable,
            str(prog),
        ],
        cwd=cluster_workdir,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, f"srun --mpi=pmix failed ({p.returncode})\n{p.stdout}\n{p.stderr}"
    _check_allreduce(p.stdout)


def test_mpi_allreduce_mpirun_in_sbatch(cluster: LiveCluster, cluster_workdir: Path) -> None:
    _require_mpi4py(cluster)
    prog = _write(cluster_workdir / "allreduce.py", ALLREDUCE)
    script = _write(
        cluster_workdir / "mpirun.sh",
        f"""\
#!/bin/bash
#SBATCH --job-name=smoke-mpirun --nodes=3 --ntasks-per-node=2 --time=3
#SBATCH --output=mpirun-%j.out
mpirun {sys.executable} {prog}
""",
    )
    jobid = cluster.sbatch(script, workdir=cluster_workdir)
    job = cluster.wait_job(jobid, timeout=300)
    out = (cluster_workdir / f"mpirun-{jobid}.out").read_text()
    assert job.state == "COMPLETED" and job.exit_code == "0:0", (job, out)
    _check_allreduce(out)


def test_torque_qsub_qstat(cluster: LiveCluster, cluster_workdir: Path) -> None:
    script = _write(
        cluster_workdir / "hello.pbs",
        """\
#!/bin/bash
echo "hello from $(hostname) as $(id -un) job ${SLURM_JOB_ID}"
""",
    )
    outfile = cluster_workdir / "hello.out"
    p = cluster.run(
        ["qsub", "-N", "smoke-qsub", "-l", "nodes=1,walltime=00:02:00", "-o", str(outfile), str(script)],
        cwd=cluster_workdir,
        timeout=30,
    )
    jobid = p.stdout.strip().split(".")[0]
    assert re.fullmatch(r"\d+", jobid), f"unexpected qsub output: {p.stdout!r}"
    # qstat lists the job (Q, R or, once done, C: finished jobs stay visible for MinJobAge=300 s)
    st = cluster.run(["qstat", jobid], timeout=30)
    row = [line.split() for line in st.stdout.splitlines() if line.split()[:1] == [jobid]]
    assert row and row[0][1] == "smoke-qsub" and row[0][4] in ("Q", "R", "C", "E"), st.stdout
    job = cluster.wait_job(jobid, timeout=300)
    assert job.state == "COMPLETED", job
    deadline = time.monotonic() + 30
    while not outfile.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = outfile.read_text()
    assert re.search(rf"^hello from node[123] as {cluster.user} job {jobid}$", text, re.M), text
    st = cluster.run(["qstat", jobid], timeout=30)
    assert any(line.split()[:1] == [jobid] and line.split()[4] == "C" for line in st.stdout.splitlines()), st.stdout


def test_torque_qdel(cluster: LiveCluster, cluster_workdir: Path) -> None:
    script = _write(cluster_workdir / "sleep.pbs", "#!/bin/bash\nsleep 300\n")
    p = cluster.run(
        ["qsub", "-N", "smoke-qdel", "-l", "walltime=00:05:00", "-o", "/dev/null", str(script)],
        cwd=cluster_workdir,
        timeout=30,
    )
    jobid = p.stdout.strip().split(".")[0]
    cluster.run(["qdel", jobid], timeout=30)
    job = cluster.wait_job(jobid, timeout=60)
    assert job.state == "CANCELLED", job


def test_client_namespace(cluster: LiveCluster) -> None:
    # who am I on the laptop, and is the laptop home there
    p = cluster.client(["sh", "-c", 'id -un; echo "$HOME"; test -f "$HOME/.ssh/id_ed25519" && echo has-key'])
    assert p.returncode == 0, p
    user = p.stdout.split()[0]
    assert p.stdout.split()[1:] == [f"/home/{user}", "has-key"], p.stdout

    # ssh to the login node works and runs sinfo there
    p = cluster.client(["ssh", "testcluster-login", "hostname; sinfo -h -N -p debug -o '%N %t'"], timeout=90)
    assert p.returncode == 0, f"ssh testcluster-login failed ({p.returncode}): {p.stderr}"
    lines = p.stdout.split("\n")
    assert lines[0] == "login", p.stdout
    assert sorted(line.split()[0] for line in lines[1:] if line.strip()) == list(NODES), p.stdout

    # but the controller is not reachable directly from the laptop
    p = cluster.client(["sinfo"], timeout=90)
    assert p.returncode != 0, f"a direct sinfo worked in the client namespace: {p.stdout}"
    assert "Unable to contact slurm controller" in p.stderr, p.stderr

    # and the cluster's shared directories are not there
    p = cluster.client(
        ["sh", "-c", 'ls -A /scratch; test -e "/scratch/$(id -un)" && echo SCRATCH-VISIBLE; ls -A /home']
    )
    assert p.returncode == 0, p
    assert "SCRATCH-VISIBLE" not in p.stdout, p.stdout
    assert p.stdout.split() == [user], f"/home and /scratch on the laptop: {p.stdout!r}"
