"""Shared data of the in-job tests (test_jobenv, test_ports, test_gpus, test_rendezvous, test_distributed)."""

import socket

PY = "/opt/py/bin/python"
F = "/scratch/alice/hpcb/0123456789abcdef"

#: the batch step of a 3-node Slurm job, 2 tasks per node, as hpcbridge's batch script leaves it
SLURM_JOB = {
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NODELIST": "gpu-a[01-03]",
    "SLURM_TASKS_PER_NODE": "2(x3)",
    "SLURM_CPUS_PER_TASK": "4",
    "HPCBRIDGE_TASK": "0",
    "HPCBRIDGE_FOLDER": F,
}


def free_port():
    """A TCP port nothing listens on right now."""
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port
