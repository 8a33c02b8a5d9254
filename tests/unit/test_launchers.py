"""Launchers (argv in, argv out), the site's launcher settings, and golden GPU scripts."""

import subprocess

import pytest
from injob import PY, SLURM_JOB, F

from hpcbridge import Executor, gpus, jobenv
from hpcbridge.errors import ConfigError, ResourceError
from hpcbridge.launchers import launcher_argv, mpirun_argv, plan, site_options
from hpcbridge.sites import site_from_mapping
from hpcbridge.spec import Resources


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


# -- GPUs: what the launcher binds, and what is left to the job ----------------------------------------------
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
    assert gpus.bind_gpus(environ) == ["2"] and jobenv.environment_from(environ, "gpu-a02").device_index == 0


# -- [mpi] env: the site's MPI environment reaches every job --------------------------------------------------
@pytest.mark.parametrize("launcher", [None, "srun", "mpirun", "torchrun"])
def test_the_sites_mpi_env_is_exported_in_every_job_whatever_its_launcher(launcher):
    site = _site(mpi={"env": {"UCX_TLS": "rc,sm", "OMPI_MCA_btl": "self,vader"}})
    _, env = plan(site, Resources(nodes=2, launcher=launcher, launcher_chosen=True), F, "t")
    assert {k: env.get(k) for k in ("UCX_TLS", "OMPI_MCA_btl")} == {"UCX_TLS": "rc,sm", "OMPI_MCA_btl": "self,vader"}
    assert env.get("HPCBRIDGE_LAUNCHER") == launcher


def test_a_plain_jobs_script_exports_the_mpi_env_over_the_sites_env(fixed):
    site = _site(mpi={"env": {"UCX_TLS": "rc,sm", "OMPI_MCA_btl": "self,vader"}})  # [env] has OMPI_MCA_btl too
    text = Executor(site=site).render(train, {})
    assert "export UCX_TLS=rc,sm\n" in text
    assert "export OMPI_MCA_btl=self,vader\n" in text and "self,tcp" not in text
