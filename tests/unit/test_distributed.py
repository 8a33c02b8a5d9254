"""torch.distributed's variables from the job environment (hpcbridge.distributed), without torch."""

import pytest
from injob import SLURM_JOB

from hpcbridge import jobenv
from hpcbridge.distributed import site_nccl_env, torch_env
from hpcbridge.errors import RendezvousError


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
    with pytest.raises(RendezvousError, match="run it with launcher='srun', 'mpirun' or 'torchrun'"):
        torch_env(env, None, {})
