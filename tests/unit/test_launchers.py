"""Launchers (argv in, argv out), the in-job environment, the launch step, GPU shares, and golden GPU scripts."""

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from hpcbridge import Executor, jobenv, rendezvous
from hpcbridge.distributed import site_nccl_env, torch_env
from hpcbridge.errors import ConfigError, ResourceError
from hpcbridge.launchers import launcher_argv, mpirun_argv, plan, site_options
from hpcbridge.sites import site_from_mapping
from hpcbridge.spec import Resources

PY = "/opt/py/bin/python"
F = "/scratch/alice/hpcb/0123456789abcdef"


def _site(**over):
    data = {
        "scheduler": "slurm",
        "python": PY,
        "workdir": "/scratch/alice/hpcb",
        "env": {"OMPI_MCA_btl": "self,tcp"},
        "modules": ["cuda/12.4"],
        "defaults": {"partition": "gpu", "walltime": "01:00:00"},
    }
    data.update(over)
    return site_from_mapping("golden", data)


def train(cfg):
    return cfg


# -- golden scripts (there is no GPU here: the scripts are pinned instead) -----------------------------------
def test_golden_srun_gpus_per_node_with_nccl(fixed, golden):
    site = _site(slurm={"mpi": "pmix"}, nccl={"NCCL_SOCKET_IFNAME": "ib0", "NCCL_IB_HCA": "mlx5_0,mlx5_1",
                                              "NCCL_DEBUG": "WARN"})
    ex = Executor(site=site, nodes=2, tasks_per_node=4, gpus_per_node=4, cpus_per_task=8, launcher="srun")
    text = ex.render(train, {})
    golden("slurm_srun_gpu.sh", text)
    assert "#SBATCH --gpus-per-node=4\n" in text and "--gres" not in text
    assert "export HPCBRIDGE_BIND_GPUS=4\n" in text  # srun gives every task all the node's GPUs: split them


def test_golden_mpirun_gres(fixed, golden):
    site = _site(
        slurm={"gpu_directive": "gres"},
        mpi={"mpirun": "/opt/openmpi/bin/mpirun", "args": ["--bind-to", "core"], "env": {"UCX_TLS": "rc,sm"}},
    )
    ex = Executor(site=site, nodes=3, tasks_per_node=2, gpus_per_node=2, cpus_per_task=4, launcher="mpirun")
    text = ex.render(train, {})
    golden("slurm_mpirun_gres.sh", text)
    assert "#SBATCH --gres=gpu:2\n" in text and "export UCX_TLS=rc,sm\n" in text


def test_golden_torchrun_gpu(fixed, golden):
    site = _site(
        nccl={"NCCL_DEBUG": "INFO"},
        distributed={"master_port_min": 29400, "master_port_max": 29499, "torchrun_args": ["--log-dir=logs"]},
    )
    ex = Executor(site=site, nodes=2, tasks_per_node=8, gpus_per_node=8, launcher="torchrun")
    text = ex.render(train, {})
    golden("slurm_torchrun_gpu.sh", text)
    assert "HPCBRIDGE_BIND_GPUS" not in text  # torchrun workers pick their GPU by LOCAL_RANK


def test_no_launcher_script_is_unchanged_by_the_distributed_settings(fixed):
    site = _site(nccl={"NCCL_DEBUG": "INFO"}, distributed={"bind_gpus": False})
    text = Executor(site=site).render(train, {})
    assert "HPCBRIDGE" not in text.replace("HPCBRIDGE_TASK", "")
    assert text.rstrip().endswith(f"exec {PY} -u -m hpcbridge.worker {F}")


def test_gpu_job_without_launcher_still_gets_the_site_nccl_settings(fixed):
    site = _site(nccl={"NCCL_DEBUG": "INFO"})
    text = Executor(site=site, gpus_per_node=1).render(train, {})
    assert "export HPCBRIDGE_NCCL_ENV='{\"NCCL_DEBUG\":\"INFO\"}'\n" in text


def test_bind_gpus_false_leaves_gpus_to_the_launcher(fixed):
    site = _site(distributed={"bind_gpus": False})
    text = Executor(site=site, nodes=1, tasks_per_node=4, gpus_per_node=4, launcher="srun").render(train, {})
    assert "HPCBRIDGE_BIND_GPUS" not in text


def test_the_rendered_script_runs_the_launch_step_then_the_launcher(fixed, tmp_path):
    """The exec line parses back, in bash, into exactly the argv the launchers built (quoted once)."""
    site = _site(slurm={"mpi": "pmix"})
    text = Executor(site=site, nodes=3, tasks_per_node=2, launcher="srun").render(train, {})
    exec_line = [line for line in text.splitlines() if line.startswith("exec ")][0]
    out = subprocess.run(["bash", "-c", f"printf '%s\\n' {exec_line[5:]}"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.splitlines() == [
        PY, "-m", "hpcbridge.rendezvous", F, "--",
        "srun", "--mpi=pmix", "--nodes=3", "--ntasks=6", "--ntasks-per-node=2", "--cpus-per-task=1",
        "--kill-on-bad-exit=1", PY, "-u", "-m", "hpcbridge.worker", F,
    ]


# -- argv -----------------------------------------------------------------------------------------------------
R32 = Resources(nodes=3, tasks_per_node=2)


def test_srun_without_a_site_mpi_leaves_mpi_to_slurm():
    argv = launcher_argv("srun", R32, python=PY, folder=F)
    assert argv[:2] == ["srun", "--nodes=3"] and not any(a.startswith("--mpi") for a in argv)


def test_srun_site_args_come_after_ours():
    argv = launcher_argv("srun", R32, python=PY, folder=F, mpi="pmi2", options={"srun_args": ["--cpu-bind=none"]})
    assert argv[:8] == ["srun", "--mpi=pmi2", "--nodes=3", "--ntasks=6", "--ntasks-per-node=2",
                        "--cpus-per-task=1", "--kill-on-bad-exit=1", "--cpu-bind=none"]


def test_mpirun_openmpi_maps_per_node_and_cpus():
    assert mpirun_argv(R32) == ["mpirun", "-np", "6", "--map-by", "ppr:2:node"]
    res = Resources(nodes=2, tasks_per_node=4, cpus_per_task=8)
    assert mpirun_argv(res) == ["mpirun", "-np", "8", "--map-by", "ppr:4:node:PE=8"]


def test_mpirun_on_pbs_passes_the_nodefile_placeholder():
    assert mpirun_argv(R32, scheduler="pbs") == ["mpirun", "-np", "6", "--map-by", "ppr:2:node", "--hostfile",
                                                 "{nodefile}"]
    mpich = {"mpirun_flavour": "mpich"}
    assert mpirun_argv(R32, scheduler="pbs", options=mpich) == ["mpiexec", "-n", "6", "-ppn", "2", "-f",
                                                                "{nodefile}"]


def test_mpiexec_pals_flavour():
    res = Resources(nodes=2, tasks_per_node=4, cpus_per_task=16)
    opts = {"mpirun_flavour": "pals", "mpirun_args": ["--cpu-bind", "depth"]}
    assert mpirun_argv(res, scheduler="pbs", options=opts) == [
        "mpiexec", "-n", "8", "--ppn", "4", "--depth", "16", "--cpu-bind", "depth"]


def test_torchrun_on_slurm_one_agent_per_node_with_all_its_cpus():
    res = Resources(nodes=3, tasks_per_node=2, cpus_per_task=3)
    argv = launcher_argv("torchrun", res, python=PY, folder=F, rdzv_id="tag1")
    assert argv == [
        "srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--cpus-per-task=6", "--kill-on-bad-exit=1",
        PY, "-m", "torch.distributed.run", "--nnodes=3", "--nproc-per-node=2", "--rdzv-backend=c10d",
        "--rdzv-endpoint={master_addr}:{master_port}", "--rdzv-id=tag1", "--max-restarts=0",
        "-m", "hpcbridge.worker", F,
    ]


def test_torchrun_on_pbs_runs_one_agent_per_node_through_mpirun():
    argv = launcher_argv("torchrun", R32, python=PY, folder=F, scheduler="pbs")
    assert argv[:7] == ["mpirun", "-np", "3", "--map-by", "ppr:1:node:PE=2", "--hostfile", "{nodefile}"]
    assert argv[7:10] == [PY, "-m", "torch.distributed.run"]


def test_local_site_launchers():
    one = Resources(tasks_per_node=4)
    assert launcher_argv("mpirun", one, python=PY, folder=F, scheduler="local")[:5] == [
        "mpirun", "-np", "4", "--map-by", "ppr:4:node"]
    assert launcher_argv("torchrun", one, python=PY, folder=F, scheduler="local")[:3] == [
        PY, "-m", "torch.distributed.run"]


@pytest.mark.parametrize(
    ("launcher", "scheduler", "res", "message"),
    [
        ("srun", "pbs", R32, "launcher='srun' needs a Slurm site (this one is 'pbs')"),
        ("srun", "local", Resources(), "launcher='srun' needs a Slurm site"),
        ("mpirun", "local", R32, "nodes=3 with launcher='mpirun': the local site is one machine"),
    ],
)
def test_launchers_a_site_cannot_run_fail_before_submission(launcher, scheduler, res, message):
    with pytest.raises(ResourceError) as info:
        launcher_argv(launcher, res, python=PY, folder=F, scheduler=scheduler)
    assert message in str(info.value)


def test_executor_on_the_local_site_refuses_srun_before_anything_is_written(tmp_path):
    ex = Executor(site="local", folder=str(tmp_path / "jobs"), launcher="srun")
    with pytest.raises(ResourceError, match="needs a Slurm site"):
        ex.submit(train, 1)
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_site_options_defaults_and_port_range():
    opts = site_options(_site())
    assert opts["mpi"] is None and opts["mpirun"] == ["mpirun"] and opts["bind_gpus"] is True
    assert "master_port_range" not in opts
    opts = site_options(_site(distributed={"master_port_min": 25000}))
    assert opts["master_port_range"] == (25000, 32767)  # the other end keeps its default
    with pytest.raises(ConfigError, match="need 1024 <= master_port_min <= master_port_max <= 65535"):
        plan(_site(distributed={"master_port_min": 40000}), Resources(launcher="srun"), F, "t")
    opts = site_options(_site(mpi={"flavour": "mpich"}))
    assert opts["mpirun"] == ["mpiexec"]


def test_unknown_distributed_key_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown key 'master_port' in \\[distributed\\]"):
        _site(distributed={"master_port": 1})


def test_plan_port_range_reaches_the_launch_step():
    site = _site(distributed={"master_port_min": 29400, "master_port_max": 29410})
    command, env = plan(site, Resources(nodes=2, launcher="srun"), F, "tag")
    assert command[:7] == [PY, "-m", "hpcbridge.rendezvous", F, "--port-range", "29400-29410", "--"]
    assert env == {"HPCBRIDGE_LAUNCHER": "srun"}


# -- the in-job environment -----------------------------------------------------------------------------------
SLURM_JOB = {
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NODELIST": "gpu-a[01-03]",
    "SLURM_TASKS_PER_NODE": "2(x3)",
    "SLURM_CPUS_PER_TASK": "4",
    "HPCBRIDGE_TASK": "0",
    "HPCBRIDGE_FOLDER": F,
}


def test_environment_under_srun():
    environ = dict(SLURM_JOB, HPCBRIDGE_LAUNCHER="srun", SLURM_STEP_ID="0", SLURM_PROCID="3", SLURM_LOCALID="1",
                   SLURM_NODEID="1", SLURM_NTASKS="6", SLURM_STEP_TASKS_PER_NODE="2(x3)",
                   HPCBRIDGE_MASTER_ADDR="gpu-a01", HPCBRIDGE_MASTER_PORT="23456", CUDA_VISIBLE_DEVICES="2,3")
    env = jobenv.environment_from(environ, "gpu-a02")
    assert env._asdict() == {
        "rank": 3, "local_rank": 1, "world_size": 6, "local_world_size": 2, "node_rank": 1, "num_nodes": 3,
        "nodes": ("gpu-a01", "gpu-a02", "gpu-a03"), "hostname": "gpu-a02", "master_addr": "gpu-a01",
        "master_port": 23456, "job_id": "77", "task": 0, "scheduler": "slurm", "launcher": "srun",
        "cpus_per_task": 4, "gpus": ("2", "3"), "device_index": 1, "folder": F,
    }
    assert not env.is_master


def test_environment_under_mpirun_ignores_the_daemons_slurm_procid():
    """OpenMPI starts its per-node daemons with srun: SLURM_PROCID is the daemon's rank, not the process's."""
    environ = dict(SLURM_JOB, SLURM_STEP_ID="1", SLURM_PROCID="2", SLURM_NODEID="2", OMPI_COMM_WORLD_RANK="5",
                   OMPI_COMM_WORLD_LOCAL_RANK="1", OMPI_COMM_WORLD_SIZE="6", OMPI_COMM_WORLD_LOCAL_SIZE="2",
                   PMIX_RANK="5", HPCBRIDGE_MASTER_PORT="23456")
    for launcher in ("mpirun", None):  # named by hpcbridge, or found from OpenMPI's own variables
        if launcher:
            environ["HPCBRIDGE_LAUNCHER"] = launcher
        env = jobenv.environment_from(environ, "gpu-a03")
        assert (env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank) == (5, 1, 6, 2, 2)
        assert env.launcher == "mpirun" and jobenv.process_rank(environ) == 5


def test_environment_under_torchrun_uses_torchruns_store():
    environ = dict(SLURM_JOB, HPCBRIDGE_LAUNCHER="torchrun", SLURM_STEP_ID="0", SLURM_PROCID="1", RANK="4",
                   LOCAL_RANK="0", WORLD_SIZE="6", LOCAL_WORLD_SIZE="2", GROUP_RANK="2", MASTER_ADDR="gpu-a01",
                   MASTER_PORT="41234", HPCBRIDGE_MASTER_PORT="29400", TORCHELASTIC_RUN_ID="x")
    env = jobenv.environment_from(environ, "gpu-a03")
    assert (env.rank, env.world_size, env.node_rank, env.master_port) == (4, 6, 2, 41234)
    del environ["HPCBRIDGE_LAUNCHER"]
    assert jobenv.detect_launcher(environ) == "torchrun" and jobenv.process_rank(environ) == 4


def test_environment_of_a_batch_script_is_one_process():
    environ = dict(SLURM_JOB, SLURM_PROCID="0", SLURM_NTASKS="6", SLURM_NODEID="0")  # no step id: batch step
    env = jobenv.environment_from(environ, "gpu-a01")
    assert (env.rank, env.world_size, env.launcher, env.num_nodes) == (0, 1, None, 3)


def test_environment_of_an_array_task():
    environ = dict(SLURM_JOB, SLURM_ARRAY_JOB_ID="70", SLURM_ARRAY_TASK_ID="7", HPCBRIDGE_TASK="7")
    env = jobenv.environment_from(environ, "gpu-a01")
    assert (env.job_id, env.task) == ("70_7", 7)


def test_environment_reads_the_published_port_from_the_job_folder(tmp_path):
    (tmp_path / "rdv").mkdir()
    (tmp_path / "rdv" / "0.json").write_text(json.dumps({"addr": "gpu-a01", "port": 24680}))
    environ = dict(SLURM_JOB, HPCBRIDGE_FOLDER=str(tmp_path), HPCBRIDGE_LAUNCHER="srun", SLURM_STEP_ID="0",
                   SLURM_PROCID="0", SLURM_NTASKS="6")
    env = jobenv.environment_from(environ, "gpu-a01")
    assert (env.master_addr, env.master_port) == ("gpu-a01", 24680)


def test_environment_on_pbs_from_the_nodefile(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("cn-07.hpc\ncn-07.hpc\ncn-02.hpc\ncn-02.hpc\ncn-11.hpc\ncn-11.hpc\n")
    environ = {"PBS_JOBID": "4242.pbs01", "PBS_NODEFILE": str(nodefile), "OMPI_COMM_WORLD_RANK": "2",
               "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    env = jobenv.environment_from(environ, "cn-02")  # short host name vs the node file's long ones
    assert env.nodes == ("cn-07.hpc", "cn-02.hpc", "cn-11.hpc")
    assert (env.scheduler, env.job_id, env.rank, env.node_rank, env.master_addr) == (
        "pbs", "4242.pbs01", 2, 1, "cn-07.hpc")


def test_environment_outside_any_job_is_this_machine(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "PBS_", "OMPI_", "PMI", "HPCBRIDGE_")) or name in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HPCBRIDGE_PORT_CLAIM_DIR", str(tmp_path))
    env = jobenv.environment()
    assert (env.scheduler, env.rank, env.world_size, env.nodes) == ("local", 0, 1, (socket.gethostname(),))
    assert env.master_port > 0 and jobenv.environment().master_port == env.master_port  # chosen once
    assert os.listdir(tmp_path) == [str(env.master_port)]  # and claimed against other jobs on this node


# -- ports -------------------------------------------------------------------------------------------------
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
    assert not jobenv.port_is_free(port)  # a live listener
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
    assert jobenv.port_is_free(port)


def test_choose_port_skips_a_port_in_use_and_a_port_claimed_by_another_job(tmp_path):
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        assert not jobenv.port_is_free(taken)
        claims = tmp_path / "claims"
        first = jobenv.choose_port((taken, taken + 2), claim_dir=str(claims), job_id="job-1")
        second = jobenv.choose_port((taken, taken + 2), claim_dir=str(claims), job_id="job-2")
        assert taken not in (first, second) and first != second  # both free; the claim keeps them apart
        assert (claims / str(first)).read_text().startswith("job-1 ")
        # the bind-tested-and-busy port's claim is gone again, and so is every temporary file
        assert sorted(os.listdir(claims)) == sorted([str(first), str(second)])
        with pytest.raises(jobenv.RendezvousError) as info:
            jobenv.choose_port((taken, taken + 2), claim_dir=str(claims), job_id="job-3", attempts=50)
        assert str(info.value) == (
            f"no free TCP port found in {taken}-{taken + 2} on {socket.gethostname()} after 3 tries (each one in "
            "use or claimed by another running job); widen [distributed] master_port_min/master_port_max in the "
            "site-config to a range open on the compute nodes"
        )
        site = _site(distributed={"master_port_min": taken, "master_port_max": taken + 2})  # the keys it names
        assert site_options(site)["master_port_range"] == (taken, taken + 2)
    finally:
        busy.close()


def _free_port():
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


CLAIM_AND_WAIT = (
    "import sys; from hpcbridge.jobenv import choose_port; "
    "lo, hi = int(sys.argv[2]), int(sys.argv[3]); "
    "print(choose_port((lo, hi), claim_dir=sys.argv[1], job_id=sys.argv[4]), flush=True); sys.stdin.read()"
)


def _claimer(claims, lo, hi, job_id):
    """A process that claims a port, prints it and lives (as a job's launch step does) until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(claims), str(lo), str(hi), job_id],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_a_claim_holds_while_its_job_lives_and_is_released_when_it_ends(tmp_path):
    port = _free_port()
    proc, got = _claimer(tmp_path, port, port, "job-1")
    try:
        assert got == port
        (job, host, pid, _, _, mark) = (tmp_path / str(port)).read_text().split()
        assert (job, host, int(pid), mark) == ("job-1", socket.gethostname(), proc.pid, "flock")
        with pytest.raises(jobenv.RendezvousError, match=f"no free TCP port found in {port}-{port} "):
            jobenv.choose_port((port, port), claim_dir=str(tmp_path), job_id="job-2")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    # its process has exited: the port is free again at once, not after PORT_CLAIM_TTL_S; the same file is
    # taken over (locked, not deleted and made again) and says who has it now
    inode = os.stat(tmp_path / str(port)).st_ino
    assert jobenv.choose_port((port, port), claim_dir=str(tmp_path), job_id="job-2") == port
    assert (tmp_path / str(port)).read_text().startswith("job-2 ")
    assert os.stat(tmp_path / str(port)).st_ino == inode and os.listdir(tmp_path) == [str(port)]


def test_an_older_hpcbridges_claim_whose_owner_cannot_be_checked_holds_until_its_ttl(tmp_path):
    """A claim without a lock (an older hpcbridge's) from another host in a shared directory, or from another pid
    namespace: the pid says nothing, so it holds for PORT_CLAIM_TTL_S; from here, until its pid has gone."""
    port = _free_port()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a pid that has exited
    for owner in (f"j other-host {gone} 1.0 {jobenv._pid_namespace()}", f"j {socket.gethostname()} {gone} 1.0 x",
                  f"j {socket.gethostname()} {gone} 1.0"):
        (tmp_path / str(port)).write_text(owner + "\n")
        with pytest.raises(jobenv.RendezvousError):
            jobenv.choose_port((port, port), claim_dir=str(tmp_path), job_id="new")
    (tmp_path / str(port)).write_text(f"j {socket.gethostname()} {gone} 1.0 {jobenv._pid_namespace()}\n")
    assert jobenv.choose_port((port, port), claim_dir=str(tmp_path), job_id="new") == port


def test_an_older_hpcbridges_expired_claim_is_taken_over(tmp_path):
    port = _free_port()
    (tmp_path / str(port)).write_text("old 1 2 3\n")
    old = os.stat(tmp_path / str(port)).st_mtime - jobenv.PORT_CLAIM_TTL_S - 5
    os.utime(tmp_path / str(port), (old, old))
    assert jobenv.choose_port((port, port), claim_dir=str(tmp_path), job_id="new") == port


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
from hpcbridge.jobenv import RendezvousError, choose_port
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
    port, n = _free_port(), 8
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
        with pytest.raises(jobenv.RendezvousError, match="no free TCP port found"):
            jobenv.choose_port((port, port), claim_dir=str(claims), job_id="ninth")
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert jobenv.choose_port((port, port), claim_dir=str(claims), job_id="after") == port


def test_free_claims_unused_for_the_ttl_and_stray_temporary_files_are_deleted_held_ones_stay(tmp_path):
    free, held = _free_port(), _free_port()
    ended, _ = _claimer(tmp_path, free, free, "ended")
    ended.stdin.close()
    ended.wait(timeout=60)
    live, _ = _claimer(tmp_path, held, held, "running")
    try:
        (tmp_path / f".{free}.1.abcd1234").write_text("")  # a launch step killed between its two steps
        old = time.time() - jobenv.PORT_CLAIM_TTL_S - 5
        for name in os.listdir(tmp_path):
            os.utime(tmp_path / name, (old, old))
        (tmp_path / "new").mkdir()
        jobenv.choose_port(claim_dir=str(tmp_path / "new"))  # another directory: nothing to clean there
        assert sorted(os.listdir(tmp_path)) == sorted([str(free), str(held), f".{free}.1.abcd1234", "new"])
        other = _free_port()
        assert jobenv.choose_port((other, other), claim_dir=str(tmp_path)) == other
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
            theirs.send(jobenv.choose_port((port, port), claim_dir=claims, job_id=job_id))
        except jobenv.RendezvousError as exc:
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
    port, alice, bob = _free_port(), 54321, 54322
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


# -- the launch step ------------------------------------------------------------------------------------------
def test_rendezvous_parses_and_substitutes():
    folder, ports, command = rendezvous.parse_args([F, "--port-range", "29400-29410", "--", "srun", "x"])
    assert (folder, ports, command) == (F, (29400, 29410), ["srun", "x"])
    assert rendezvous.substitute(["--rdzv-endpoint={master_addr}:{master_port}", "{nodefile}", "{x}"], "n1", 5,
                                 "/var/nf") == ["--rdzv-endpoint=n1:5", "/var/nf", "{x}"]
    for bad in ([F], [F, "--"], ["--", "srun"], [F, "--bogus", "--", "srun"]):
        with pytest.raises(ValueError):
            rendezvous.parse_args(bad)


def test_rendezvous_publishes_then_execs_the_launcher(tmp_path):
    """The real launch step in a fake one-node Slurm job: it writes rdv/3.json and the launcher sees the port."""
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": socket.gethostname(),
           "HPCBRIDGE_TASK": "3", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-m", "hpcbridge.rendezvous", str(tmp_path), "--port-range", "31000-31999", "--",
         "sh", "-c", 'echo "$1 $HPCBRIDGE_MASTER_ADDR $HPCBRIDGE_MASTER_PORT $HPCBRIDGE_FOLDER"', "sh",
         "{master_addr}:{master_port}"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    record = json.loads((tmp_path / "rdv" / "3.json").read_text())
    addr, port = record["addr"], record["port"]
    assert addr == socket.gethostname() and 31000 <= port <= 31999 and record["job_id"] == "9"
    assert out.stdout.split() == [f"{addr}:{port}", addr, str(port), str(tmp_path)]
    assert oct(os.stat(tmp_path / "rdv").st_mode & 0o777) == "0o700"


def test_the_launch_steps_claim_lasts_as_long_as_the_launcher_it_execs_into(tmp_path):
    port = _free_port()
    claims = tmp_path / "claims"
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": socket.gethostname(),
           "PYTHONPATH": os.pathsep.join(sys.path), "HPCBRIDGE_PORT_CLAIM_DIR": str(claims)}
    launcher = "import os, sys; print(os.environ['HPCBRIDGE_MASTER_PORT'], flush=True); sys.stdin.read()"
    step = subprocess.Popen([sys.executable, "-m", "hpcbridge.rendezvous", str(tmp_path), "--port-range",
                             f"{port}-{port}", "--", sys.executable, "-c", launcher],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert step.stdout.readline().strip() == str(port)  # the launcher runs (same pid as the launch step)
        assert (claims / str(port)).read_text().split()[:3] == ["9", socket.gethostname(), str(step.pid)]
        with pytest.raises(jobenv.RendezvousError, match=f"no free TCP port found in {port}-{port} "):
            jobenv.choose_port((port, port), claim_dir=str(claims), job_id="next")
    finally:
        step.stdin.close()
        assert step.wait(timeout=60) == 0
    assert jobenv.choose_port((port, port), claim_dir=str(claims), job_id="next") == port


def test_rendezvous_reports_a_launcher_that_is_not_there(tmp_path):
    env = {"PATH": "/nonexistent", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "hpcbridge.rendezvous", str(tmp_path), "--", "srun", "x"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 127 and "hpcbridge.rendezvous: cannot start 'srun'" in out.stderr


# -- GPUs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("visible", "local_rank", "per_node", "share"),
    [
        (["0", "1", "2", "3"], 2, 4, ["2"]),
        (["0", "1", "2", "3", "4", "5", "6", "7"], 1, 4, ["2", "3"]),
        (["4", "5"], 1, 2, ["5"]),  # Slurm's own numbering is kept
        (["0", "1"], 3, 4, None),  # fewer GPUs than ranks: they share, nothing is hidden
        (["0", "1", "2"], 0, 2, None),  # uneven
        (["0"], 0, 1, None),  # one rank: leave it alone
    ],
)
def test_gpu_share(visible, local_rank, per_node, share):
    assert jobenv.gpu_share(visible, local_rank, per_node) == share


def test_bind_gpus_narrows_cuda_visible_devices_per_local_rank():
    environ = dict(SLURM_JOB, HPCBRIDGE_LAUNCHER="srun", SLURM_STEP_ID="0", SLURM_PROCID="3", SLURM_LOCALID="1",
                   SLURM_NODEID="1", SLURM_NTASKS="6", HPCBRIDGE_BIND_GPUS="4", CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert jobenv.environment_from(environ, "gpu-a02").device_index == 1  # all 4 visible: its own index
    assert jobenv.bind_gpus(environ) == ["2", "3"] and environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert jobenv.environment_from(environ, "gpu-a02").device_index == 0  # first of its own share
    del environ["CUDA_VISIBLE_DEVICES"]  # no gres plugin setting it: the node's GPUs are 0..N-1
    assert jobenv.bind_gpus(environ) == ["2", "3"]
    env = jobenv.environment_from(environ, "gpu-a02")
    assert env.gpus == ("2", "3") and env.device_index == 0


def test_bind_gpus_under_mpirun_uses_openmpis_local_rank_not_the_daemons_slurm_ids():
    """Under mpirun every rank also has the srun-started daemon's SLURM_LOCALID (0 here for both local ranks)."""
    environ = dict(SLURM_JOB, SLURM_STEP_ID="1", SLURM_PROCID="1", SLURM_LOCALID="0", SLURM_NODEID="1",
                   OMPI_COMM_WORLD_RANK="3", OMPI_COMM_WORLD_LOCAL_RANK="1", OMPI_COMM_WORLD_SIZE="6",
                   OMPI_COMM_WORLD_LOCAL_SIZE="2", HPCBRIDGE_LAUNCHER="mpirun", HPCBRIDGE_BIND_GPUS="4",
                   CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert jobenv.bind_gpus(environ) == ["6", "7"] and environ["CUDA_VISIBLE_DEVICES"] == "6,7"
    env = jobenv.environment_from(environ, "gpu-a02")
    assert (env.gpus, env.device_index, env.local_rank) == (("6", "7"), 0, 1)
    environ.update(OMPI_COMM_WORLD_LOCAL_RANK="0", CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert jobenv.bind_gpus(environ) == ["4", "5"]
    # three ranks on a node with 4 GPUs: uneven, every rank keeps all four
    environ.update(OMPI_COMM_WORLD_LOCAL_RANK="2", OMPI_COMM_WORLD_LOCAL_SIZE="3", CUDA_VISIBLE_DEVICES="0,1,2,3")
    del environ["HPCBRIDGE_GPUS_BOUND"]
    assert jobenv.bind_gpus(environ) is None and environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert jobenv.environment_from(environ, "gpu-a02").device_index == 2  # local rank 2 -> 2 % 4


def test_torchrun_gpus_are_left_to_its_workers_local_rank():
    """torchrun is not narrowed (plan sets no HPCBRIDGE_BIND_GPUS): each worker uses device LOCAL_RANK."""
    _, env = plan(_site(), Resources(nodes=2, tasks_per_node=4, gpus_per_node=4, launcher="torchrun"), F, "t")
    assert "HPCBRIDGE_BIND_GPUS" not in env
    _, env = plan(_site(), Resources(nodes=2, tasks_per_node=4, gpus_per_node=4, launcher="mpirun"), F, "t")
    assert env["HPCBRIDGE_BIND_GPUS"] == "4"
    environ = dict(SLURM_JOB, HPCBRIDGE_LAUNCHER="torchrun", SLURM_STEP_ID="0", SLURM_PROCID="1", SLURM_LOCALID="0",
                   RANK="6", LOCAL_RANK="2", WORLD_SIZE="8", LOCAL_WORLD_SIZE="4", GROUP_RANK="1",
                   TORCHELASTIC_RUN_ID="x", CUDA_VISIBLE_DEVICES="0,1,2,3")
    env = jobenv.environment_from(environ, "gpu-a02")
    assert (env.gpus, env.device_index, env.local_rank, env.local_world_size) == (("0", "1", "2", "3"), 2, 2, 4)
    # were HPCBRIDGE_BIND_GPUS set anyway, the split follows torchrun's LOCAL_RANK/LOCAL_WORLD_SIZE, not Slurm's
    environ["HPCBRIDGE_BIND_GPUS"] = "4"
    assert jobenv.bind_gpus(environ) == ["2"] and jobenv.environment_from(environ, "gpu-a02").device_index == 0


# -- torch.distributed variables --------------------------------------------------------------------------
def test_torch_env_sets_the_rendezvous_and_the_site_nccl_settings():
    env = jobenv.environment_from(
        dict(SLURM_JOB, HPCBRIDGE_LAUNCHER="srun", SLURM_STEP_ID="0", SLURM_PROCID="5", SLURM_LOCALID="1",
             SLURM_NODEID="2", SLURM_NTASKS="6", HPCBRIDGE_MASTER_PORT="23456"), "gpu-a03")
    environ = {"HPCBRIDGE_NCCL_ENV": '{"NCCL_DEBUG":"WARN","NCCL_SOCKET_IFNAME":"ib0"}', "NCCL_DEBUG": "TRACE"}
    assert site_nccl_env(environ) == {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "ib0"}
    out = torch_env(env, {"NCCL_IB_HCA": "mlx5_0"}, environ)
    assert out == {
        "NCCL_SOCKET_IFNAME": "ib0",  # NCCL_DEBUG was set by the user already: theirs wins
        "NCCL_IB_HCA": "mlx5_0",
        "MASTER_ADDR": "gpu-a01", "MASTER_PORT": "23456", "RANK": "5", "WORLD_SIZE": "6", "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "2",
    }


def test_torch_env_without_a_port_says_how_to_get_one():
    env = jobenv.environment_from(dict(SLURM_JOB, HPCBRIDGE_RANK="1", HPCBRIDGE_WORLD_SIZE="2"), "gpu-a02")
    with pytest.raises(jobenv.RendezvousError, match="run it with launcher='srun', 'mpirun' or 'torchrun'"):
        torch_env(env, None, {})
