"""Golden PBS batch scripts (select syntax, arrays, GPUs, Torque), and the script's own shell lines run in bash."""

from __future__ import annotations

import os
import subprocess

import pytest

from hpcbridge import Executor
from hpcbridge.sites import site_from_mapping

TAG = "0123456789abcdef"
FOLDER = f"/scratch/alice/hpcb/{TAG}"


def _site(flavour: str, **over):
    data = {
        "scheduler": "pbs",
        "flavour": flavour,
        "python": "/opt/py/bin/python",
        "workdir": "/scratch/alice/hpcb",
        "env": {"OMPI_MCA_btl": "self,tcp"},
        "modules": ["gcc/12"],
        "defaults": {"walltime": "00:10:00"},
    }
    data.update(over)
    return site_from_mapping(f"golden-{flavour}", data)


def square(x):
    return x * x


def test_pbspro_single_job_select(fixed, golden):
    ex = Executor(site=_site("pbspro"), cpus_per_task=4, mem_gb=2, partition="workq", account="proj42", name="train")
    golden("pbs_pro_single.sh", ex.render(square, 3))


def test_pbspro_array_with_gpus_on_several_nodes(fixed, golden):
    ex = Executor(
        site=_site("pbspro"),
        nodes=2,
        tasks_per_node=4,
        gpus_per_node=4,
        mem_gb=64,
        walltime="1-00:00:00",
        partition="gpu",
        array_parallelism=16,
        extra_directives=["-W group_list=proj42"],
    )
    golden("pbs_pro_array_gpus.sh", ex._render_script(FOLDER, TAG, 200, square, 200))


def test_torque_array(fixed, golden):
    ex = Executor(site=_site("torque"), tasks_per_node=2, cpus_per_task=2, mem_gb=0.5, partition="batch",
                  array_parallelism=4)
    golden("pbs_torque_array.sh", ex._render_script(FOLDER, TAG, 10, square, 10))


@pytest.mark.parametrize(
    "flavour, env, task",
    [
        ("pbspro", {}, "0"),  # a plain job
        ("pbspro", {"PBS_ARRAY_INDEX": "3"}, "3"),
        ("torque", {"PBS_ARRAYID": "5"}, "5"),
        ("torque", {"SLURM_ARRAY_TASK_ID": "2"}, "2"),  # slurm-wlm-torque sets no PBS_* variables in the job
    ],
)
def test_each_task_writes_its_own_logs(tmp_path, flavour, env, task):
    """Run the rendered script in bash with echo as the 'python': the task index picks the log files."""
    folder = tmp_path / "job"
    (folder / "log").mkdir(parents=True)
    site = _site(flavour, python="/bin/echo", modules=[], setup=["echo to-stderr >&2"])
    text = Executor(site=site)._render_script(str(folder), TAG, 10, square, 10)
    script = tmp_path / "script.sh"
    script.write_text(text)
    run_env = {"PATH": "/usr/bin:/bin", **env}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""  # nothing reaches the scheduler's own files
    assert (folder / "log" / f"{task}.out").read_text() == f"-u -m hpcbridge.worker {folder}\n"
    assert (folder / "log" / f"{task}.err").read_text() == "to-stderr\n"
    assert sorted(os.listdir(folder / "log")) == [f"{task}.err", f"{task}.out"]


def test_a_node_file_is_written_where_the_scheduler_gave_none(tmp_path):
    """Under slurm-wlm-torque there is no PBS_NODEFILE: the script writes one (a line per rank slot) for mpirun."""
    folder = tmp_path / "job"
    (folder / "log").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # stands in for Slurm's: expands the node list
    scontrol.write_text('#!/bin/sh\n[ "$*" = "show hostnames node[1-2]" ] && printf "node1\\nnode2\\n"\n')
    scontrol.chmod(0o755)
    site = _site("torque", python="/bin/echo", modules=[], setup=['echo "nodefile=$PBS_NODEFILE" >&2'])
    text = Executor(site=site, nodes=2, tasks_per_node=2)._render_script(str(folder), TAG, None, square, 1)
    script = tmp_path / "script.sh"
    script.write_text(text)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node[1-2]"}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
    assert out.returncode == 0, out.stderr
    nodefile = folder / "log" / "nodefile.0"
    assert (folder / "log" / "0.err").read_text() == f"nodefile={nodefile}\n"
    assert nodefile.read_text() == "node1\nnode1\nnode2\nnode2\n"
    # a real PBS gives its own node file: left alone
    env["PBS_NODEFILE"] = "/var/spool/pbs/aux/1234.server"
    nodefile.unlink()
    (folder / "log" / "0.err").unlink()
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
    assert out.returncode == 0 and not nodefile.exists()
    assert (folder / "log" / "0.err").read_text() == "nodefile=/var/spool/pbs/aux/1234.server\n"


def _exec_line(text):
    return [line for line in text.splitlines() if line.startswith("exec /")][-1]


WORKER_ONCE = f"exec /opt/py/bin/python -u -m hpcbridge.worker {FOLDER}"


@pytest.mark.parametrize("flavour", ["pbspro", "torque"])
def test_pbs_runs_a_job_of_several_tasks_with_mpirun_unless_told_otherwise(fixed, flavour):
    ex = Executor(site=_site(flavour), nodes=3, tasks_per_node=2)  # no launcher given
    text = ex._render_script(FOLDER, TAG, None, square, 1)
    assert _exec_line(text) == (
        f"exec /opt/py/bin/python -m hpcbridge.rendezvous {FOLDER} -- mpirun -np 6 --map-by ppr:2:node "
        f"--hostfile '{{nodefile}}' /opt/py/bin/python -u -m hpcbridge.worker {FOLDER}"
    )
    assert "export HPCBRIDGE_LAUNCHER=mpirun\n" in text
    assert ex._new_submission([1], is_array=False).ranks == 6  # every rank's result is awaited
    # launcher=None said out loud: run once, as on Slurm
    once = ex.with_resources(launcher=None)
    assert _exec_line(once._render_script(FOLDER, TAG, None, square, 1)) == WORKER_ONCE
    assert once._new_submission([1], is_array=False).ranks == 1
    # one task: nothing to launch
    single = ex.with_resources(nodes=1, tasks_per_node=1)
    assert _exec_line(single._render_script(FOLDER, TAG, None, square, 1)) == WORKER_ONCE
    # ... and the unchosen default follows later changes
    assert single.with_resources(tasks_per_node=4)._new_submission([1], is_array=False).ranks == 4


def test_a_site_configs_default_launcher_wins_over_the_pbs_default(fixed):
    site = _site("pbspro", defaults={"walltime": "00:10:00", "launcher": "torchrun"})
    text = Executor(site=site, nodes=2, tasks_per_node=2)._render_script(FOLDER, TAG, None, square, 1)
    assert " -- mpirun -np 2 --map-by ppr:1:node:PE=2 --hostfile '{nodefile}' /opt/py/bin/python -m " \
           "torch.distributed.run --nnodes=2 --nproc-per-node=2 " in _exec_line(text)
    once = Executor(site=site, nodes=2, tasks_per_node=2, launcher=None)
    assert _exec_line(once._render_script(FOLDER, TAG, None, square, 1)) == WORKER_ONCE


def test_slurm_still_runs_the_callable_once_without_a_launcher(fixed):
    site = site_from_mapping("golden-slurm", {"scheduler": "slurm", "python": "/opt/py/bin/python",
                                              "workdir": "/scratch/alice/hpcb"})
    ex = Executor(site=site, nodes=3, tasks_per_node=2)
    assert _exec_line(ex._render_script(FOLDER, TAG, None, square, 1)) == WORKER_ONCE
    assert ex._new_submission([1], is_array=False).ranks == 1
