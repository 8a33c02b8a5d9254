"""GPU binding inside a job: each local rank's share of the node's GPUs, set before CUDA starts.

Used by the worker when the launcher does not bind GPUs itself (``HPCBRIDGE_BIND_GPUS``); standard library and
:mod:`hpcbridge.jobenv` only.
"""

from __future__ import annotations

import os
import socket
from typing import Dict, List, Optional

from .jobenv import BIND_GPUS_VAR, CUDA_VISIBLE_DEVICES_VAR, GPUS_BOUND_VAR, environment_from


def gpu_share(visible: List[str], local_rank: int, local_world_size: int) -> Optional[List[str]]:
    """This local rank's share of the node's GPUs, or None when they cannot be split evenly (left alone).

    4 GPUs, 4 ranks -> one each; 8 GPUs, 4 ranks -> two each; 2 GPUs, 4 ranks -> None (ranks share).
    """
    if local_world_size <= 1 or not visible or len(visible) % local_world_size:
        return None
    per = len(visible) // local_world_size
    return visible[local_rank * per : (local_rank + 1) * per]


def bind_gpus(environ: Optional[Dict[str, str]] = None) -> Optional[List[str]]:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to this local rank's share (before CUDA starts); returns the share.

    Used by the worker when ``HPCBRIDGE_BIND_GPUS=N`` (N GPUs per node) says the launcher does not bind GPUs
    itself. Without ``CUDA_VISIBLE_DEVICES`` the node's GPUs are taken to be 0..N-1.
    """
    env = os.environ if environ is None else environ
    count = env.get(BIND_GPUS_VAR, "").strip()
    per_node = int(count) if count.isdigit() else 0
    visible = [d.strip() for d in env.get(CUDA_VISIBLE_DEVICES_VAR, "").split(",") if d.strip()]
    if not visible:
        visible = [str(i) for i in range(per_node)]
    job = environment_from(env, socket.gethostname())
    share = gpu_share(visible, job.local_rank, job.local_world_size)
    if share is not None:
        env[CUDA_VISIBLE_DEVICES_VAR] = ",".join(share)
        env[GPUS_BOUND_VAR] = "1"
    return share
