"""GPU binding (hpcbridge.gpus): each local rank's share of CUDA_VISIBLE_DEVICES, under srun and mpirun."""

import pytest
from injob import SLURM_JOB

from hpcbridge import gpus, jobenv


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
    assert gpus.gpu_share(visible, local_rank, per_node) == share


def test_bind_gpus_narrows_cuda_visible_devices_per_local_rank():
    environ = dict(SLURM_JOB, HPCBRIDGE_LAUNCHER="srun", SLURM_STEP_ID="0", SLURM_PROCID="3", SLURM_LOCALID="1",
                   SLURM_NODEID="1", SLURM_NTASKS="6", HPCBRIDGE_BIND_GPUS="4", CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert jobenv.environment_from(environ, "gpu-a02").device_index == 1  # all 4 visible: its own index
    assert gpus.bind_gpus(environ) == ["2", "3"] and environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert jobenv.environment_from(environ, "gpu-a02").device_index == 0  # first of its own share
    del environ["CUDA_VISIBLE_DEVICES"]  # no gres plugin setting it: the node's GPUs are 0..N-1
    assert gpus.bind_gpus(environ) == ["2", "3"]
    env = jobenv.environment_from(environ, "gpu-a02")
    assert env.gpus == ("2", "3") and env.device_index == 0


def test_bind_gpus_under_mpirun_uses_openmpis_local_rank_not_the_daemons_slurm_ids():
    """Under mpirun every rank also has the srun-started daemon's SLURM_LOCALID (0 here for both local ranks)."""
    environ = dict(SLURM_JOB, SLURM_STEP_ID="1", SLURM_PROCID="1", SLURM_LOCALID="0", SLURM_NODEID="1",
                   OMPI_COMM_WORLD_RANK="3", OMPI_COMM_WORLD_LOCAL_RANK="1", OMPI_COMM_WORLD_SIZE="6",
                   OMPI_COMM_WORLD_LOCAL_SIZE="2", HPCBRIDGE_LAUNCHER="mpirun", HPCBRIDGE_BIND_GPUS="4",
                   CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert gpus.bind_gpus(environ) == ["6", "7"] and environ["CUDA_VISIBLE_DEVICES"] == "6,7"
    env = jobenv.environment_from(environ, "gpu-a02")
    assert (env.gpus, env.device_index, env.local_rank) == (("6", "7"), 0, 1)
    environ.update(OMPI_COMM_WORLD_LOCAL_RANK="0", CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert gpus.bind_gpus(environ) == ["4", "5"]
    # three ranks on a node with 4 GPUs: uneven, every rank keeps all four
    environ.update(OMPI_COMM_WORLD_LOCAL_RANK="2", OMPI_COMM_WORLD_LOCAL_SIZE="3", CUDA_VISIBLE_DEVICES="0,1,2,3")
    del environ["HPCBRIDGE_GPUS_BOUND"]
    assert gpus.bind_gpus(environ) is None and environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert jobenv.environment_from(environ, "gpu-a02").device_index == 2  # local rank 2 -> 2 % 4
