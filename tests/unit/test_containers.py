"""Containers (hpcbridge/containers.py): the image a job runs in, the runtimes' argv (golden, from the Apptainer,
Charliecloud and pyxis documentation: apptainer exec/--cleanenv/--env-file/--bind/--nv/--rocm/--pwd, ch-run
--unset-env/--set-env/-b/--cd, srun --container-image/--container-mounts/--container-workdir), the environment
allow-list, and golden batch scripts. Charliecloud is also run for real by tests/live/test_containers_live.py;
Apptainer, Singularity and pyxis are not on the test cluster (docs/containers.md)."""

from __future__ import annotations

import os
import subprocess

import pytest
from injob import PY

from hpcbridge import Executor
from hpcbridge.containers import (
    DEFAULT_PATH,
    Bind,
    all_binds,
    bind_targets,
    check_container,
    container_for,
    env_file_text,
    job_files,
    srun_flags,
    wrap,
)
from hpcbridge.errors import ConfigError, ResourceError
from hpcbridge.launchers import host_python_needed, plan
from hpcbridge.sites import site_from_mapping
from hpcbridge.spec import Resources, resources_from

F = "/scratch/alice/hpcb/0123456789abcdef"
SIF = "/sw/containers/pytorch-24.05.sif"
WORKER = ["python3", "-u", "-m", "hpcbridge.worker", F]


def _site(scheduler="slurm", container=None, **over):
    data = {
        "scheduler": scheduler,
        "python": PY,
        "workdir": "/scratch/alice/hpcb",
        "env": {"OMPI_MCA_btl": "self,tcp", "MY_SETTING": "1"},
        "slurm": {"mpi": "pmix"},
        "defaults": {"walltime": "01:00:00"},
        "container": container if container is not None else {"runtime": "apptainer", "image": SIF},
    }
    if scheduler == "pbs":
        data.update(flavour="pbspro")
        data.pop("slurm")
    data.update(over)
    return site_from_mapping("golden", data)


def _res(**kw):
    return resources_from(Resources(), kw)


def square(x):
    return x * x


# -- which container --------------------------------------------------------------------------------------------
def test_the_site_image_applies_unless_the_job_names_another_or_none():
    site = _site()
    assert container_for(site, _res()).image == SIF
    assert container_for(site, _res(container="/sw/other.sif")).image == "/sw/other.sif"
    assert container_for(site, _res(container=None)) is None  # container=None opts out of the site's image
    assert container_for(_site(container={"runtime": "apptainer"}), _res()) is None  # no image: on the host
    assert container_for(site, _res(container_runtime="singularity")).binary == "singularity"


def test_a_container_needs_a_runtime_and_an_absolute_image():
    with pytest.raises(ResourceError) as info:
        container_for(_site(container={}), _res(container="/x.sif"))
    assert str(info.value) == (
        "container='/x.sif' needs a runtime: set [container] runtime = \"apptainer\" (or 'singularity', "
        "'charliecloud', 'pyxis') in the site-config of 'golden', or pass container_runtime=..."
    )
    with pytest.raises(ResourceError, match="give the image's absolute path on the cluster"):
        container_for(_site(), _res(container="images/x.sif"))
    with pytest.raises(ResourceError, match="charliecloud runs a directory or SquashFS image: give its absolute"):
        container_for(_site(), _res(container="docker://python:3.11", container_runtime="charliecloud"))
    assert container_for(_site(), _res(container="docker://python:3.11")).is_uri


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"container_runtime": "docker"}, "container_runtime='docker' is not known; use one of apptainer, "
         "singularity, charliecloud, pyxis (or None: the site-config's [container] runtime)"),
        ({"container_runtime": "apptainr"}, "container_runtime='apptainr' is not known (did you mean 'apptainer'?)"),
        ({"container_binds": ["data"]}, "container_binds: 'data' is not valid; give bind mounts such as ['/data', "
         "'/src:/dst:ro'] (SRC[:DST[:ro|rw]], absolute paths without ':' ',' or spaces)"),
        ({"container_binds": ["/a:/b:rx"]}, "container_binds: '/a:/b:rx' is not valid"),
        ({"container_env": ["MY-VAR"]}, "container_env: 'MY-VAR' is not valid; give variable names or prefixes "
         "such as ['WANDB_API_KEY', 'MYAPP_*']"),
        ({"container": ""}, "container='' must be an image: its path on the cluster"),
        ({"container": 3}, "container=3 must be an image"),
        ({"contianer": "/x.sif"}, "unknown resource 'contianer' (did you mean 'container'?)"),
    ],
)
def test_bad_container_resources_say_what_to_give(kw, message):
    with pytest.raises(ResourceError) as info:
        Executor(site=_site(), **kw)
    assert str(info.value).startswith(message)


def test_a_bad_site_bind_names_where_it_was_set():
    site = _site(container={"runtime": "apptainer", "image": SIF, "binds": ["scratch"]})
    with pytest.raises(ConfigError, match=r"container\.binds: 'scratch' is not SRC\[:DST\[:ro\|rw\]\]"):
        Executor(site=site)


def test_charliecloud_binds_cannot_be_read_only():
    site = _site(container={"runtime": "charliecloud", "image": "/img"})
    with pytest.raises(ResourceError, match="charliecloud's ch-run -b has no read-only option"):
        Executor(site=site, container_binds=["/data:/data:ro"])


# -- argv: apptainer and singularity ----------------------------------------------------------------------------------
def test_apptainer_argv_cleanenv_env_file_gpus_binds_pwd_options():
    site = _site(container={"runtime": "apptainer", "image": SIF, "binds": ["/sw", "/data:/mnt/data:ro"],
                            "options": ["--writable-tmpfs"]})
    c = container_for(site, _res(gpus_per_node=4, container_binds=["/project/x"]), folder=F, workdir="/home/alice/run")
    assert wrap(c, WORKER) == [
        "apptainer", "exec", "--cleanenv", "--env-file", f"{F}/container.env", "--nv",
        "--bind", "/sw:/sw", "--bind", "/data:/mnt/data:ro", "--bind", "/project/x:/project/x",
        "--bind", f"{F}:{F}", "--bind", "/home/alice/run:/home/alice/run", "--pwd", "/home/alice/run",
        "--writable-tmpfs", SIF, *WORKER,
    ]


def test_apptainer_amd_gpus_get_rocm_and_no_gpus_get_neither():
    site = _site(container={"runtime": "singularity", "image": SIF, "gpu": "amd"})
    argv = wrap(container_for(site, _res(gpus_per_node=8), folder=F), WORKER)
    assert argv[:6] == ["singularity", "exec", "--cleanenv", "--env-file", f"{F}/container.env", "--rocm"]
    argv = wrap(container_for(site, _res(), folder=F), WORKER)
    assert "--rocm" not in argv and "--nv" not in argv


def test_a_path_already_bound_at_its_own_path_is_not_bound_again():
    site = _site(container={"runtime": "apptainer", "image": SIF, "binds": ["/scratch"]})
    c = container_for(site, _res(), folder=F, workdir="/")
    assert all_binds(c) == [Bind("/scratch", "/scratch")]  # the job folder is under /scratch; / is never bound


def test_the_found_program_runs_the_image():
    c = container_for(_site(), _res(), folder=F, binary="singularity")
    assert wrap(c, WORKER)[:2] == ["singularity", "exec"]


# -- argv: charliecloud -------------------------------------------------------------------------------------------
def test_charliecloud_argv_unsets_all_but_the_allow_list_and_binds_top_level_directories():
    site = _site(container={"runtime": "charliecloud", "image": "/var/lib/images/worker", "env": ["WANDB_*"],
                            "options": ["--set-env"]})
    c = container_for(site, _res(container_env=["MY_TOKEN"], container_binds=["/data:/mnt/0"]), folder=F,
                      workdir="/home/alice/run")
    assert wrap(c, WORKER) == [
        "ch-run",
        "--unset-env=!(CUDA_VISIBLE_DEVICES|HPCBRIDGE_*|MPI_LOCALNRANKS|MPI_LOCALRANKID|MY_SETTING|MY_TOKEN|OMPI_*"
        "|PALS_*|PMI*|PRTE_*|ROCR_VISIBLE_DEVICES|SALLOC_*|SLURM_*|SRUN_*|TMPDIR|WANDB_*)",
        f"--set-env=PATH={DEFAULT_PATH}",
        "-b", "/data:/mnt/0", "-b", "/scratch:/scratch", "-b", "/home:/home", "--cd=/home/alice/run",
        "--set-env", "/var/lib/images/worker", "--", *WORKER,
    ]
    # ch-run cannot create a bind target in a read-only image: the image check looks for these
    assert bind_targets(c) == ["/mnt/0", "/scratch", "/home"]


def test_charliecloud_keeps_the_host_path_only_when_allowed_and_never_binds_tmp():
    site = _site(container={"runtime": "charliecloud", "image": "/img", "env": ["PATH"]})
    argv = wrap(container_for(site, _res(), folder="/tmp/jobs/1"), WORKER)
    assert argv == ["ch-run", argv[1], "/img", "--", *WORKER]  # no --set-env=PATH, no -b /tmp: ch-run binds /tmp
    assert "|PATH|" in argv[1]


def test_the_image_check_runs_without_the_jobs_binds_and_variables():
    site = _site(container={"runtime": "charliecloud", "image": "/img", "binds": ["/sw"]})
    probe = check_container(container_for(site, _res(gpus_per_node=1), folder=F, workdir="/home/a"))
    assert wrap(probe, ["python3", "-V"]) == ["ch-run", "--unset-env=*", f"--set-env=PATH={DEFAULT_PATH}", "/img",
                                              "--", "python3", "-V"]


# -- argv: pyxis (srun's flags) ----------------------------------------------------------------------------------------
def test_pyxis_adds_srun_flags_and_runs_one_task_without_a_launcher():
    site = _site(container={"runtime": "pyxis", "image": "nvcr.io#nvidia/pytorch:24.05-py3", "binds": ["/sw"],
                            "options": ["--container-remap-root"]})
    c = container_for(site, _res(), folder=F, workdir="/home/a")
    assert srun_flags(c) == ["--container-image=nvcr.io#nvidia/pytorch:24.05-py3",
                             f"--container-mounts=/sw:/sw,{F}:{F},/home/a:/home/a", "--container-workdir=/home/a",
                             "--container-remap-root"]
    assert wrap(c, WORKER) == WORKER
    command, _ = plan(site, _res(), F, "t", workdir="/home/a")
    assert command == ["srun", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--cpus-per-task=1",
                       "--kill-on-bad-exit=1", *srun_flags(c), *WORKER]
    command, _ = plan(site, _res(nodes=2, tasks_per_node=2, launcher="srun"), F, "t", workdir="/home/a")
    assert command[5:] == ["srun", "--mpi=pmix", "--nodes=2", "--ntasks=4", "--ntasks-per-node=2",
                           "--cpus-per-task=1", "--kill-on-bad-exit=1", *srun_flags(c), *WORKER]


def test_pyxis_needs_srun():
    site = _site(container={"runtime": "pyxis", "image": "ubuntu:24.04"})
    with pytest.raises(ResourceError, match="launcher='mpirun' cannot start pyxis containers"):
        plan(site, _res(nodes=2, launcher="mpirun"), F, "t")
    pbs = _site("pbs", container={"runtime": "pyxis", "image": "ubuntu:24.04"})
    with pytest.raises(ResourceError, match="container_runtime='pyxis' needs a Slurm site \\(srun\\)"):
        plan(pbs, _res(launcher=None), F, "t")


# -- launchers: only the per-rank program runs inside -----------------------------------------------------------------
def test_the_launch_step_and_launcher_stay_on_the_host():
    site = _site(container={"runtime": "charliecloud", "image": "/img"})
    command, env = plan(site, _res(nodes=2, tasks_per_node=2, launcher="srun"), F, "t")
    inside = command.index("ch-run")
    assert command[:4] == [PY, "-m", "hpcbridge.rendezvous", F]  # the host's python: the launch step
    assert command[5:inside][0] == "srun" and command[-5:] == WORKER
    assert env["HPCBRIDGE_LAUNCHER"] == "srun"
    command, _ = plan(site, _res(nodes=2, tasks_per_node=4, launcher="torchrun"), F, "t")
    inside = command.index("ch-run")
    assert command[5:inside][:2] == ["srun", "--nodes=2"]  # one agent per node, started on the host
    agent = command[command.index("--", inside) + 1:]
    assert agent[:3] == ["python3", "-m", "torch.distributed.run"] and agent[-3:] == ["-m", "hpcbridge.worker", F]
    command, _ = plan(_site("pbs", container={"runtime": "charliecloud", "image": "/img"}),
                      _res(nodes=2, tasks_per_node=2), F, "t")  # PBS: mpirun for several tasks
    assert command[5:8] == ["mpirun", "-np", "4"] and command[-7:-5] == ["/img", "--"]


def test_a_container_job_needs_the_hosts_python_only_for_a_launch_step():
    site = _site()
    assert host_python_needed(site, _res(container=None))
    assert not host_python_needed(site, _res())
    assert host_python_needed(site, _res(nodes=2, launcher="srun"))


# -- the environment allow-list ----------------------------------------------------------------------------------------
def test_the_allow_list_holds_the_schedulers_variables_the_sites_env_and_the_declared_names():
    site = _site("pbs", container={"runtime": "apptainer", "image": SIF, "env": ["WANDB_*"]},
                 mpi={"env": {"UCX_TLS": "rc"}})
    c = container_for(site, _res(container_env=["HF_TOKEN"]))
    assert c.allow == ("HPCBRIDGE_*", "PMI*", "OMPI_*", "PRTE_*", "PALS_*", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
                       "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "TMPDIR", "PBS_*", "MY_SETTING", "UCX_TLS",
                       "WANDB_*", "HF_TOKEN")  # OMPI_MCA_btl: under OMPI_*


def test_a_bad_declared_name_in_the_site_config_is_a_config_error():
    site = _site(container={"runtime": "apptainer", "image": SIF, "env": ["BAD-NAME"]})
    with pytest.raises(ConfigError, match="container.env: 'BAD-NAME' is not a variable name or a prefix"):
        Executor(site=site)


def test_the_apptainer_env_file_exports_only_the_allowed_variables_of_each_rank(tmp_path):
    """apptainer evaluates --env-file with its own shell interpreter (mvdan/sh) on the host, the host's variables
    given as unexported shell variables and allexport on; bash does the same here."""
    site = _site(container={"runtime": "apptainer", "image": SIF, "env": ["WANDB_*"]})
    c = container_for(site, _res(container_env=["HF_TOKEN"]), folder=F)
    assert job_files(site, _res(container_env=["HF_TOKEN"]), F) == {f"{F}/container.env": env_file_text(c).encode()}
    path = tmp_path / "container.env"
    path.write_text(env_file_text(c))
    host = {"SLURM_PROCID": "3", "PMIX_RANK": "3", "PMI_FD": "7", "HPCBRIDGE_TASK": "0", "CUDA_VISIBLE_DEVICES": "1",
            "WANDB_API_KEY": "k", "HF_TOKEN": "t", "MY_SETTING": "1", "SECRET": "s", "HOME": "/home/a",
            "LD_LIBRARY_PATH": "/host/lib", "TMPDIR": "/tmp/job", "OMPI_COMM_WORLD_RANK": "3"}
    assigns = "; ".join(f"{k}='{v}'" for k, v in host.items())
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", f"{assigns}; set -a; . {path}; set +a; env -0"],
                         env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30, check=True)
    seen = dict(item.split("=", 1) for item in out.stdout.split("\0") if item)
    for own in ("PATH", "PWD", "SHLVL", "_"):
        seen.pop(own, None)
    assert seen == {k: v for k, v in host.items() if k not in ("SECRET", "HOME", "LD_LIBRARY_PATH")}


def test_the_env_file_golden():
    c = container_for(_site(container={"runtime": "apptainer", "image": SIF}), _res(), folder=F)
    assert env_file_text(c) == (
        "# hpcbridge: the host variables this job sees in its container (docs/containers.md); apptainer evaluates\n"
        "# this on the host for each rank, with the host's environment, and --cleanenv drops every other variable\n"
        "for hpcbridge_name in ${!HPCBRIDGE_@} ${!OMPI_@} ${!PALS_@} ${!PMI@} ${!PRTE_@} ${!SALLOC_@} ${!SLURM_@} "
        "${!SRUN_@}; do\n"
        '    export "$hpcbridge_name=${!hpcbridge_name}"\n'
        "done\n"
        "unset hpcbridge_name\n"
        'if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES}"; fi\n'
        'if [ -n "${MPI_LOCALNRANKS+set}" ]; then export MPI_LOCALNRANKS="${MPI_LOCALNRANKS}"; fi\n'
        'if [ -n "${MPI_LOCALRANKID+set}" ]; then export MPI_LOCALRANKID="${MPI_LOCALRANKID}"; fi\n'
        'if [ -n "${MY_SETTING+set}" ]; then export MY_SETTING="${MY_SETTING}"; fi\n'
        'if [ -n "${ROCR_VISIBLE_DEVICES+set}" ]; then export ROCR_VISIBLE_DEVICES="${ROCR_VISIBLE_DEVICES}"; fi\n'
        'if [ -n "${TMPDIR+set}" ]; then export TMPDIR="${TMPDIR}"; fi\n'
    )


# -- golden batch scripts ------------------------------------------------------------------------------------------
def test_golden_slurm_apptainer_srun_gpus(fixed, golden):
    site = _site(container={"runtime": "apptainer", "image": SIF, "binds": ["/sw"]},
                 nccl={"NCCL_SOCKET_IFNAME": "ib0"})
    ex = Executor(site=site, nodes=2, tasks_per_node=4, gpus_per_node=4, launcher="srun",
                  container_binds=["/data:/data:ro"])
    golden("slurm_container_apptainer_srun_gpu.sh", ex.render(square, 2))


def test_golden_slurm_charliecloud_single(fixed, golden):
    site = _site(container={"runtime": "charliecloud", "image": "/var/lib/images/worker", "binds": ["/sw"]})
    golden("slurm_container_charliecloud.sh", Executor(site=site).render(square, 2))


def test_golden_slurm_pyxis_torchrun(fixed, golden):
    site = _site(container={"runtime": "pyxis", "image": "nvcr.io#nvidia/pytorch:24.05-py3"})
    ex = Executor(site=site, nodes=2, tasks_per_node=8, gpus_per_node=8, launcher="torchrun")
    golden("slurm_container_pyxis_torchrun.sh", ex.render(square, 2))


def test_golden_pbspro_apptainer_mpirun(fixed, golden):
    site = _site("pbs", container={"runtime": "apptainer", "image": SIF})
    golden("pbs_pro_container_mpirun.sh", Executor(site=site, nodes=2, tasks_per_node=2).render(square, 2))


def test_golden_torque_charliecloud(fixed, golden):
    site = _site("pbs", flavour="torque", container={"runtime": "charliecloud", "image": "/img"})
    golden("pbs_torque_container.sh", Executor(site=site).render(square, 2))


def test_a_missing_bind_source_stops_the_script_with_its_path(tmp_path):
    """The script's own check, run in bash: the runtime is never started, the message names the path."""
    site = _site(container={"runtime": "charliecloud", "image": "/img",
                            "binds": [str(tmp_path), f"{tmp_path}/missing:/mnt/0"]})
    text = Executor(site=site).render(square, 2)
    script = tmp_path / "script.sh"
    script.write_text(text.replace("exec ch-run", "exec echo ch-run"))
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "USER": "alice"})
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"hpcbridge: the container bind source {tmp_path}/missing does not exist on "
                          f"{os.uname().nodename}; bind paths that every node has\n")
    (tmp_path / "missing").mkdir()
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.startswith("ch-run --unset-env=")


def test_the_cli_flags_are_the_container_resources(capsys):
    from hpcbridge.cli import main

    assert main(["render", "--site", "local", "--container", "/img", "--container-runtime", "charliecloud",
                 "--bind", "/data", "--bind", "/src:/mnt/0", "--container-env", "MY_*", "--", "true"]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith("exec ch-run '--unset-env=!(") and "|MY_*|" in last
    assert " -b /data:/data -b /src:/mnt/0 " in last and last.endswith(" /img -- python3 -u -m hpcbridge.worker "
                                                                    + last.split()[-1])
    with pytest.raises(SystemExit) as info:  # argparse refuses an unknown runtime: exit code 2
        main(["render", "--site", "local", "--container", "/img", "--container-runtime", "dockr", "--", "true"])
    assert info.value.code == 2
    assert "invalid choice: 'dockr'" in capsys.readouterr().err
