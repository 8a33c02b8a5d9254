"""Launchers on the built-in local site (one machine, 2 ranks): the same launch step, environment and helper as on
a cluster, with real torchrun and mpirun processes."""

import importlib
import os
import shutil

import pytest

import hpcbridge
from hpcbridge import Executor


def need(module):
    """Import ``module``, or skip when it is missing -- except in CI (CI=true), where tests/requirements.txt installs
    it: there a missing module fails the test instead of hiding it."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def need_program(name):
    if shutil.which(name) is None:
        message = f"no {name} on this machine (tests/cluster/up installs openmpi-bin)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def torch_ranks():
    import torch
    import torch.distributed as dist

    env = hpcbridge.init_torch_distributed(timeout_s=60)
    t = torch.tensor([env.rank + 1.0])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return {"rank": env.rank, "world": env.world_size, "launcher": env.launcher, "scheduler": env.scheduler,
            "sum": t.item(), "port": env.master_port}


def mpi_ranks():
    from mpi4py import MPI

    env = hpcbridge.environment()
    return (env.rank, env.local_rank, env.world_size, MPI.COMM_WORLD.allreduce(env.rank + 1))


def test_torchrun_on_the_local_site(tmp_path):
    need("torch")
    ex = Executor(site="local", folder=str(tmp_path / "jobs"), tasks_per_node=2, launcher="torchrun")
    job = ex.submit(torch_ranks)
    results = job.results(timeout=180)
    assert [(r["rank"], r["world"], r["launcher"], r["scheduler"], r["sum"]) for r in results] == [
        (0, 2, "torchrun", "local", 3.0), (1, 2, "torchrun", "local", 3.0)]
    assert os.path.exists(f"{job.folder}/rdv/0.json")


def test_mpirun_on_the_local_site(tmp_path, monkeypatch):
    need("mpi4py")
    need_program("mpirun")
    if os.geteuid() == 0:
        monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
        monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    ex = Executor(site="local", folder=str(tmp_path / "jobs"), tasks_per_node=2, launcher="mpirun")
    assert ex.submit(mpi_ranks).results(timeout=180) == [(0, 0, 2, 3), (1, 1, 2, 3)]
