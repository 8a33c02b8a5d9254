"""Multi-node jobs on the live Slurm test cluster (3 nodes x 2 CPUs, OpenMPI 4.1 + PMIx, torch CPU build).

Every job here is one allocation across nodes, run through hpcbridge's launchers (srun, mpirun, torchrun), as the
user running pytest (alice in tests/run).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time

import pytest

import hpcbridge
from hpcbridge import Executor, JobState, load_site

NODES = ("node1", "node2", "node3")
NCCL = {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_DEBUG": "WARN", "NCCL_IB_DISABLE": "1"}


#: the cluster is shared with other test runs, and a 3 x 2 job needs every CPU: allow for queueing
WAIT_S = 600


@pytest.fixture(scope="module")
def cluster_python(cluster):
    """The site's python must have mpi4py and torch (tests/requirements.txt, installed by tests/stage)."""
    python = load_site("testcluster").python
    for module in ("mpi4py", "torch"):
        p = cluster.run([python, "-c", f"import {module}"], check=False, timeout=120)
        if p.returncode != 0:
            pytest.fail(f"{module} is not importable in {python}: install tests/requirements.txt into it "
                        f"(tests/stage does): {p.stderr.strip()[-300:]}")
    return python


@pytest.fixture
def make_executor(cluster, cluster_python, cluster_workdir):
    made = []

    def make(site_overrides=None, **resources):
        site = load_site("testcluster", nccl=NCCL, **(site_overrides or {}))
        resources.setdefault("walltime", "00:05:00")
        ex = Executor(site=site, folder=str(cluster_workdir / "jobs"), **resources)
        made.append(ex)
        return ex

    yield make
    for ex in made:  # a failed test leaves nothing running on the cluster
        ex.shutdown(wait=False, cancel_futures=True)


# -- callables that run on every rank -------------------------------------------------------------------------
def mpi_allreduce(offset):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    env = hpcbridge.environment()
    total = comm.allreduce(comm.Get_rank() + offset, op=MPI.SUM)
    gathered = comm.allgather(socket.gethostname())
    return {"mpi_rank": comm.Get_rank(), "mpi_size": comm.Get_size(), "sum": total, "hosts": gathered,
            "rank": env.rank, "host": socket.gethostname()}


def torch_allreduce():
    import torch
    import torch.distributed as dist

    env = hpcbridge.init_torch_distributed(timeout_s=120)
    seen = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                           "LOCAL_WORLD_SIZE", *NCCL)}
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)
    backend = dist.get_backend()
    dist.destroy_process_group()
    return {"sum": t.item(), "env": seen, "backend": backend, "rank": env.rank, "host": env.hostname,
            "node_rank": env.node_rank, "master": (env.master_addr, env.master_port), "job_id": env.job_id}


def _wait_for(done, what, timeout=300):
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def report_port_and_hold(arrived_dir, hold_file):
    """Rank 0 reports the port its launch step chose (claimed, not bound yet: only the claim keeps other jobs off
    it now) in ``arrived_dir/JOBID``; every rank holds until ``hold_file`` exists. Returns the port."""
    env = hpcbridge.environment()
    if env.rank == 0:
        with open(os.path.join(arrived_dir, env.job_id), "w") as fh:
            fh.write(f"{env.master_addr}:{env.master_port}")
    _wait_for(lambda: os.path.exists(hold_file), f"{hold_file} never appeared")
    return env.master_port


def torch_allreduce_held(arrived_dir, hold_file, bound_dir=None, jobs_expected=0):
    """report_port_and_hold, then init_torch_distributed (rank 0's store binds the port), then, with
    ``bound_dir``, rank 0 waits until every job's store is listening, then one all_reduce."""
    import torch
    import torch.distributed as dist

    report_port_and_hold(arrived_dir, hold_file)
    env = hpcbridge.init_torch_distributed(timeout_s=120)
    if bound_dir and env.rank == 0:
        open(os.path.join(bound_dir, env.job_id), "w").close()
        _wait_for(lambda: len(os.listdir(bound_dir)) >= jobs_expected, f"only {os.listdir(bound_dir)} bound")
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return {"sum": t.item(), "rank": env.rank, "host": env.hostname, "master": (env.master_addr, env.master_port)}


def explode_on_rank_4(unknown_here=False):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 4:
        error = ValueError
        if unknown_here:  # a class that exists only in the job: its exception cannot be rebuilt by the client
            import sys
            import types

            mod = types.ModuleType("only_in_the_job")
            exec("class Boom(ValueError):\n    pass\n", mod.__dict__)
            sys.modules["only_in_the_job"] = mod
            error = mod.Boom
        raise error(f"boom on rank {comm.Get_rank()} of {comm.Get_size()}")
    comm.barrier()  # the others wait for rank 4, which never comes: the launcher must end them
    return "unreachable"


def describe_environment():
    env = hpcbridge.environment()
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    scontrol = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              timeout=30).stdout.split()
    rdv = open(os.path.join(env.folder, "rdv", f"{env.task}.json")).read()
    return {"env": env._asdict(), "scontrol": scontrol, "nodelist": nodelist, "rdv": rdv,
            "host": socket.gethostname()}


# -- MPI ----------------------------------------------------------------------------------------------------
def _check_mpi(results):
    assert len(results) == 6
    for rank, r in enumerate(results):
        assert (r["rank"], r["mpi_rank"], r["mpi_size"]) == (rank, rank, 6), r
        assert r["sum"] == sum(range(6)) + 6 * 10, r  # ranks 0..5 each add rank + 10: 75
        assert r["host"] == NODES[rank // 2], r  # block distribution: ranks 0,1 on node1 ...
        assert r["hosts"] == [NODES[i // 2] for i in range(6)], r


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_mpi4py_allreduce_on_3_nodes_x_2_tasks(cluster, make_executor, launcher):
    ex = make_executor(nodes=3, tasks_per_node=2, launcher=launcher)
    job = ex.submit(mpi_allreduce, 10)
    results = job.results(timeout=WAIT_S)
    _check_mpi(results)
    assert job.result() == results[0] and job.state == JobState.COMPLETED
    assert sorted(os.listdir(f"{job.folder}/res")) == [f"0.{r}.pkl" for r in range(6)]
    rec = cluster.wait_job(job.job_id)
    assert (rec.state, rec.sacct["NNodes"]) == ("COMPLETED", "3")


# -- torch.distributed ------------------------------------------------------------------------------------------
def test_torch_gloo_all_reduce_on_3_nodes_through_the_helper(make_executor):
    ex = make_executor(nodes=3, tasks_per_node=1, launcher="srun", mem_gb=1)
    job = ex.submit(torch_allreduce)
    results = job.results(timeout=WAIT_S)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert [r["host"] for r in results] == list(NODES)
    port = results[0]["master"][1]
    for rank, r in enumerate(results):
        assert r["sum"] == 6.0 and r["backend"] == "gloo", r
        assert r["env"] == {"MASTER_ADDR": "node1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "3",
                            "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", **NCCL}, r
    assert 20000 <= port <= 32767


def test_torchrun_launcher_across_3_nodes(make_executor):
    ex = make_executor(nodes=3, tasks_per_node=2, launcher="torchrun", mem_gb=1.5)
    job = ex.submit(torch_allreduce)
    results = job.results(timeout=WAIT_S)
    assert [r["rank"] for r in results] == list(range(6))
    for rank, r in enumerate(results):
        assert r["sum"] == 21.0 and r["host"] == NODES[rank // 2] and r["node_rank"] == rank // 2, r
        assert r["env"]["LOCAL_RANK"] == str(rank % 2) and r["env"]["WORLD_SIZE"] == "6", r
        assert r["master"][0] == "node1", r
    # c10d rendezvous on the first node, at the port the launch step chose and published
    import json

    rdv = json.load(open(f"{job.folder}/rdv/0.json"))
    assert rdv["addr"] == "node1" and rdv["host"] == "node1" and 20000 <= rdv["port"] <= 32767
    assert "--rdzv-endpoint={master_addr}:{master_port}" in job.script
    assert job.script.count("srun --nodes=3 --ntasks=3 --ntasks-per-node=1 --cpus-per-task=2") == 1


# -- failures -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("launcher", "unknown_here"), [("srun", False), ("mpirun", False), ("srun", True)])
def test_a_failure_on_rank_4_surfaces_rank_4s_traceback(cluster, make_executor, launcher, unknown_here):
    ex = make_executor(nodes=3, tasks_per_node=2, launcher=launcher, walltime="00:03:00")
    job = ex.submit(explode_on_rank_4, unknown_here)
    if unknown_here:  # the exception's class cannot be imported here: a RemoteError, with the rank all the same
        with pytest.raises(hpcbridge.errors.RemoteError) as remote:
            job.result(timeout=WAIT_S)
        exc = remote.value
        assert (exc.rank, exc.type_name) == (4, "only_in_the_job.Boom")
        assert str(exc).startswith(f"only_in_the_job.Boom: boom on rank 4 of 6 (job {job.job_id}, rank 4, host node3)")
        assert exc.remote_traceback.rstrip().endswith("only_in_the_job.Boom: boom on rank 4 of 6")
    else:
        with pytest.raises(ValueError, match="^boom on rank 4 of 6$") as info:
            job.result(timeout=WAIT_S)
        exc = info.value
        assert exc.rank == 4
        cause = str(exc.__cause__)
        assert f"Remote traceback (job {job.job_id}, rank 4, host node3)" in cause
        assert exc.remote_traceback.rstrip().endswith("ValueError: boom on rank 4 of 6")
    assert "in explode_on_rank_4\n" in exc.remote_traceback  # (pickled by value: no source lines)
    assert job.state == JobState.FAILED
    # the other ranks were blocked in a barrier: rank 4 left at once and the launcher ended them (before, mpi4py's
    # MPI_Finalize on rank 4 waited for them and the job hung until its walltime)
    rec = cluster.wait_job(job.job_id, timeout=240)
    elapsed = cluster.run(["sacct", "-n", "-X", "-P", "-j", job.job_id, "-o", "ElapsedRaw"], timeout=30).stdout
    assert rec.state == "FAILED" and int(elapsed.split()[0]) < 60, (rec, elapsed)


# -- concurrent jobs on the same nodes --------------------------------------------------------------------------
def _wait_arrived(jobs, arrived, timeout=WAIT_S):
    """Until every job's rank 0 has its process group up (its marker file); a job that ended early fails here."""
    deadline = time.monotonic() + timeout
    while len(os.listdir(arrived)) < len(jobs):
        for job in jobs:
            if job.done():
                pytest.fail(f"job {job.job_id} ended before holding: {job.exception()!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"only {os.listdir(arrived)} of {[j.job_id for j in jobs]} arrived in {timeout} s")
        time.sleep(0.2)
    return {name: (open(arrived / name).read()) for name in os.listdir(arrived)}


def _squeue(cluster, *job_ids):
    out = cluster.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %N"], timeout=30).stdout
    return {line.split()[0]: tuple(line.split()[1:]) for line in out.splitlines() if line.strip()}


def _narrow_ports(n):
    """A fresh range of n ports: claims are node-local and random picks from the default range rarely meet it."""
    lo = random.randrange(21000, 31000)
    return lo, lo + n - 1, {"distributed": {"master_port_min": lo, "master_port_max": lo + n - 1}}


def test_two_2_node_jobs_at_once_on_the_same_nodes_claim_the_two_ports_of_a_2_port_range(
    cluster, make_executor, cluster_workdir
):
    """Both jobs hold after their launch steps chose a port, before anything binds it, until both are RUNNING on
    node1+node2: with two ports to choose from, random or job-id-derived ports would collide half the time and
    the bind test cannot help yet (nothing listens); the claims keep them apart. Then both process groups come
    up at once (each rank 0 waits for the other's store) and all_reduce. The pair that does this finds both
    ports' claims left by an earlier pair whose jobs have ended (the path every job takes in a narrow range):
    each claim is taken over by exactly one of them. (The earlier pair never binds the ports: a port whose store
    has just closed may sit in TIME_WAIT on node1 for 60 s, and the bind test rightly counts it as taken.)"""
    lo, hi, site = _narrow_ports(2)
    ex = make_executor(site_overrides=site, nodes=2, tasks_per_node=1, launcher="srun", mem_gb=1,
                       extra_directives=["--nodelist=node1,node2"])
    arrived, hold = cluster_workdir / "arrived-first", cluster_workdir / "hold-first"
    arrived.mkdir()
    first = [ex.submit(report_port_and_hold, str(arrived), str(hold)) for _ in range(2)]
    masters = _wait_arrived(first, arrived)
    ids = [job.job_id for job in first]
    assert _squeue(cluster, *ids) == {i: ("RUNNING", "node[1-2]") for i in ids}  # at the same time, same nodes
    assert sorted(int(masters[i].split(":")[1]) for i in ids) == [lo, hi], masters  # claims alone keep them apart
    hold.touch()
    assert sorted(job.result(timeout=WAIT_S) for job in first) == [lo, hi]
    for i in ids:  # gone from node1, their launch steps with them: both claims are left, free
        assert cluster.wait_job(i, timeout=120).state == "COMPLETED"

    arrived, hold, bound = cluster_workdir / "arrived", cluster_workdir / "hold", cluster_workdir / "bound"
    arrived.mkdir()
    bound.mkdir()
    jobs = [ex.submit(torch_allreduce_held, str(arrived), str(hold), str(bound), 2) for _ in range(2)]
    masters = _wait_arrived(jobs, arrived)
    ids = [job.job_id for job in jobs]
    assert _squeue(cluster, *ids) == {i: ("RUNNING", "node[1-2]") for i in ids}  # at the same time, same nodes
    hold.touch()
    results = [job.results(timeout=WAIT_S) for job in jobs]
    ports = sorted(int(masters[i].split(":")[1]) for i in ids)
    assert ports == [lo, hi], masters  # distinct, and both inside the site's range
    for job, rs in zip(jobs, results):
        assert [r["sum"] for r in rs] == [3.0, 3.0] and [r["host"] for r in rs] == ["node1", "node2"], rs
        assert {r["master"] for r in rs} == {("node1", int(masters[job.job_id].split(":")[1]))}, rs
    assert sorted(os.listdir(bound)) == sorted(ids)  # both stores listened at the same time


def test_a_job_that_finds_every_port_claimed_fails_clearly_and_an_ended_job_frees_its_port(
    cluster, make_executor, cluster_workdir
):
    """A one-port range: a second job running at once on the same first node gets no port, and says so (there is
    no room for a third job on node1's 2 CPUs, so a one-port range is how the range runs out here). The port is
    free again as soon as the holding job has ended, not after the claim's 10-minute lifetime."""
    port, _, site = _narrow_ports(1)
    arrived, hold = cluster_workdir / "arrived", cluster_workdir / "hold"
    arrived.mkdir()
    ex = make_executor(site_overrides=site, nodes=2, tasks_per_node=1, launcher="srun", mem_gb=1,
                       extra_directives=["--nodelist=node1,node2"])
    holder = ex.submit(torch_allreduce_held, str(arrived), str(hold))
    assert _wait_arrived([holder], arrived) == {holder.job_id: f"node1:{port}"}
    late = ex.submit(torch_allreduce_held, str(arrived), str(hold))
    with pytest.raises(hpcbridge.errors.JobLostError) as info:
        late.result(timeout=WAIT_S)
    assert str(info.value).startswith(f"job {late.job_id} ended (FAILED, exit code 1) without writing a result")
    assert (
        f"\nhpcbridge.rendezvous: no free TCP port found in {port}-{port} on node1 after 1 tries (each one in use "
        "or claimed by another running job); widen [distributed] master_port_min/master_port_max in the "
        "site-config to a range open on the compute nodes"
    ) in str(info.value)
    record = cluster.wait_job(late.job_id, timeout=120)
    assert (record.state, record.sacct["NodeList"]) == ("FAILED", "node[1-2]")
    assert _squeue(cluster, holder.job_id) == {holder.job_id: ("RUNNING", "node[1-2]")}  # it was there all along
    hold.touch()
    assert [r["sum"] for r in holder.results(timeout=WAIT_S)] == [3.0, 3.0]
    assert cluster.wait_job(holder.job_id, timeout=120).state == "COMPLETED"
    # the holder has left node1: its claim ended with it, so the next job gets the port straight away
    (arrived / holder.job_id).unlink()
    again = ex.submit(torch_allreduce_held, str(arrived), str(hold))
    assert [r["master"] for r in again.results(timeout=WAIT_S)] == [("node1", port)] * 2


# -- environment() --------------------------------------------------------------------------------------------
def test_environment_inside_a_3_node_job(make_executor):
    ex = make_executor(nodes=3, tasks_per_node=2, cpus_per_task=1, launcher="srun")
    job = ex.submit(describe_environment)
    results = job.results(timeout=WAIT_S)
    first = results[0]["env"]
    for rank, r in enumerate(results):
        env = r["env"]
        assert env == {
            "rank": rank, "local_rank": rank % 2, "world_size": 6, "local_world_size": 2, "node_rank": rank // 2,
            "num_nodes": 3, "nodes": NODES, "hostname": NODES[rank // 2], "master_addr": "node1",
            "master_port": first["master_port"], "job_id": job.job_id, "task": 0, "scheduler": "slurm",
            "launcher": "srun", "cpus_per_task": 1, "gpus": (), "device_index": 0, "folder": job.folder,
        }, r
        assert r["nodelist"] == "node[1-3]" and tuple(r["scontrol"]) == env["nodes"]  # Slurm agrees
    import json

    assert json.loads(results[0]["rdv"])["port"] == first["master_port"]
