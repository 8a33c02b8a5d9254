"""torch.distributed in one call, inside a job: the variables, the site's NCCL settings, the process group.

    def train(cfg):
        env = hpcbridge.init_torch_distributed()        # gloo on CPU nodes, nccl when CUDA is there
        ...
        torch.distributed.destroy_process_group()

    Executor(site="hpc", nodes=4, tasks_per_node=4, gpus_per_node=4, launcher="srun").submit(train, cfg)

Works with every launcher: under srun/mpirun it sets MASTER_ADDR/MASTER_PORT (the port published by the job's
launch step), RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/GROUP_RANK; under torchrun it keeps torchrun's own.
The site-config's ``nccl`` table (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_DEBUG ...) is applied first; variables
already set in the process win, ``nccl_env=`` given here wins over both.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, Mapping, MutableMapping, Optional

from .errors import RendezvousError
from .jobenv import (
    MASTER_PORT_VAR,
    NCCL_ENV_VAR,
    TORCH_GROUP_RANK_VAR,
    TORCH_LOCAL_RANK_VAR,
    TORCH_LOCAL_WORLD_SIZE_VAR,
    TORCH_MASTER_ADDR_VAR,
    TORCH_MASTER_PORT_VAR,
    TORCH_RANK_VAR,
    TORCH_WORLD_SIZE_VAR,
    JobEnvironment,
    environment,
)


def site_nccl_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The site-config's ``nccl`` table as the job received it (``HPCBRIDGE_NCCL_ENV``, JSON)."""
    environ = os.environ if environ is None else environ
    text = environ.get(NCCL_ENV_VAR, "")
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def torch_env(
    env: JobEnvironment,
    nccl_env: Optional[Mapping[str, str]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Dict[str, str]:
    """The variables :func:`setup_torch_env` sets for ``env`` (pure).

    Site NCCL variables are included only when not already in ``environ``; ``nccl_env`` always is.
    """
    environ = os.environ if environ is None else environ
    if env.master_port <= 0:
        raise RendezvousError(
            f"no master port for this job (rank {env.rank} of {env.world_size} on {env.hostname}): run it with "
            f"launcher='srun', 'mpirun' or 'torchrun' so the launch step publishes one, or set {MASTER_PORT_VAR}"
        )
    out = {k: v for k, v in site_nccl_env(environ).items() if k not in environ}
    out.update({str(k): str(v) for k, v in (nccl_env or {}).items()})
    out.update(
        {
            TORCH_MASTER_ADDR_VAR: env.master_addr,
            TORCH_MASTER_PORT_VAR: str(env.master_port),
            TORCH_RANK_VAR: str(env.rank),
            TORCH_WORLD_SIZE_VAR: str(env.world_size),
            TORCH_LOCAL_RANK_VAR: str(env.local_rank),
            TORCH_LOCAL_WORLD_SIZE_VAR: str(env.local_world_size),
            TORCH_GROUP_RANK_VAR: str(env.node_rank),
        }
    )
    return out


def setup_torch_env(
    nccl_env: Optional[Mapping[str, str]] = None, environ: Optional[MutableMapping[str, str]] = None
) -> JobEnvironment:
    """Set MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and the site's NCCL
    variables in ``os.environ``, for ``init_process_group(init_method="env://")``; returns the environment."""
    target = os.environ if environ is None else environ
    env = environment()
    target.update(torch_env(env, nccl_env, target))
    return env


def init_torch_distributed(
    backend: Optional[str] = None,
    *,
    timeout_s: Optional[float] = None,
    nccl_env: Optional[Mapping[str, str]] = None,
    **kwargs: Any,
) -> JobEnvironment:
    """:func:`setup_torch_env`, then ``torch.distributed.init_process_group`` with this job's ranks.

    ``backend``: default ``"nccl"`` when CUDA is available (after ``torch.cuda.set_device`` to this rank's
    GPU), else ``"gloo"``. ``timeout_s``: the process group's timeout. Other keywords go to
    ``init_process_group``. Calling it again in an initialised process returns the environment unchanged.
    """
    import torch
    import torch.distributed as dist

    env = setup_torch_env(nccl_env)
    if dist.is_initialized():
        return env
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(env.device_index)
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size, **kwargs
    )
    return env
