"""The in-job environment (hpcbridge.jobenv): ranks per launcher, the allocation, the master address and port."""

import json
import os
import socket

from injob import SLURM_JOB, F

from hpcbridge import errors, hostlist, jobenv, ports
from hpcbridge.schedulers.allocation import LOCAL, PBS, SLURM, Allocation


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


# -- the allocation, generically ------------------------------------------------------------------------------
def test_a_new_scheduler_is_one_allocation_value(monkeypatch, tmp_path):
    """jobenv names no scheduler: a batch system it has never heard of works once it is in ALLOCATIONS."""
    hosts = tmp_path / "hosts"
    hosts.write_text("lsf-3\nlsf-3\nlsf-1\n")
    lsf = Allocation("lsf", job_id_vars=("LSB_JOBID",), array_task_id_vars=("LSB_JOBINDEX",),
                     nodefile_var="LSB_DJOB_HOSTFILE", cpus_per_task_vars=("LSB_CPUS",))
    environ = {"LSB_JOBID": "31", "LSB_JOBINDEX": "2", "LSB_DJOB_HOSTFILE": str(hosts), "LSB_CPUS": "6"}
    assert jobenv.environment_from(environ, "lsf-1").scheduler == "local"
    monkeypatch.setattr(jobenv, "ALLOCATIONS", (*jobenv.ALLOCATIONS, lsf))
    env = jobenv.environment_from(environ, "lsf-1")
    assert (env.scheduler, env.job_id, env.nodes, env.node_rank, env.cpus_per_task) == (
        "lsf", "31", ("lsf-3", "lsf-1"), 1, 6)  # no array job id declared: the job id stays as it is
    assert jobenv.allocation(environ) is lsf and jobenv.node_file(environ) == str(hosts)


def test_the_first_allocation_whose_job_id_is_set_wins():
    assert jobenv.allocation({}) is LOCAL and jobenv.allocation({"SLURM_JOB_ID": ""}) is LOCAL  # empty: not set
    assert jobenv.allocation({"SLURM_JOBID": "5"}) is SLURM and jobenv.allocation({"PBS_JOBID": "5.s"}) is PBS
    assert jobenv.allocation({"SLURM_JOB_ID": "5", "PBS_JOBID": "6.s"}) is SLURM  # the order of ALLOCATIONS


def test_the_node_file_of_a_torque_layer_over_slurm_is_the_one_its_batch_script_wrote():
    """The PBS batch script writes PBS_NODEFILE itself when the job is really Slurm's: {nodefile} is that file."""
    assert jobenv.node_file(dict(SLURM_JOB, PBS_NODEFILE="/f/log/nodefile.0")) == "/f/log/nodefile.0"
    assert jobenv.node_file({"PBS_JOBID": "4242.pbs01", "PBS_NODEFILE": "/var/spool/pbs/aux/4242"}) == (
        "/var/spool/pbs/aux/4242")
    assert jobenv.node_file(SLURM_JOB) == "" and jobenv.node_file({}) == ""


def test_names_that_moved_out_are_still_importable_from_their_old_modules():
    from hpcbridge.jobenv import DEFAULT_PORT_RANGE, JobEnvironment, RendezvousError, choose_port, environment

    assert RendezvousError is errors.RendezvousError and issubclass(RendezvousError, errors.HpcBridgeError)
    assert issubclass(RendezvousError, RuntimeError) and choose_port is ports.choose_port
    assert DEFAULT_PORT_RANGE == ports.DEFAULT_PORT_RANGE and callable(environment) and JobEnvironment._fields
    assert hostlist.HostlistError is errors.HostlistError and issubclass(errors.HostlistError, ValueError)
