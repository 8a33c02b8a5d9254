"""Partition limits: a request beyond its partition fails before anything is written, naming partitions that fit."""

from __future__ import annotations

import os
import sys

import pytest

from hpcbridge import Executor
from hpcbridge.errors import ResourceError
from hpcbridge.sites.model import site_from_mapping


# -- partition limits, checked by the Executor before anything is submitted -------------------------------------
def gpu_site(**over):
    data = {
        "scheduler": "slurm",
        "python": sys.executable,
        "workdir": "/nonexistent/hpcb",
        "defaults": {"partition": "gpu"},
        "partitions": {
            "cpu": {"max_nodes": 64, "cpus_per_node": 128, "mem_gb_per_node": 512, "gpus_per_node": 0,
                    "max_walltime": "2-00:00:00", "default": True},
            "gpu": {"max_nodes": 16, "cpus_per_node": 64, "mem_gb_per_node": 480, "gpus_per_node": 4,
                    "max_walltime": "1-00:00:00"},
            "gpu-large": {"max_nodes": 8, "cpus_per_node": 112, "mem_gb_per_node": "1900GB", "gpus_per_node": 8,
                          "max_walltime": "12:00:00"},
        },
    }
    data.update(over)
    return site_from_mapping("gpucluster", data)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus_per_node": 8}, "gpus_per_node=8 exceeds partition 'gpu' (max 4); partitions with 8: 'gpu-large'"),
        ({"gpus_per_node": 9}, "gpus_per_node=9 exceeds partition 'gpu' (max 4); "
                               "no partition of site 'gpucluster' allows more than 8"),
        ({"nodes": 32}, "nodes=32 exceeds partition 'gpu' (max 16); partitions with 32: 'cpu'"),
        ({"cpus_per_task": 100}, "cpus_per_task=100 exceeds partition 'gpu' (max 64 CPUs per node); "
                                 "partitions with 100 CPUs per node: 'cpu', 'gpu-large'"),
        ({"tasks_per_node": 4, "cpus_per_task": 32},
         "tasks_per_node x cpus_per_task = 4 x 32 = 128 CPUs per node exceeds partition 'gpu' (max 64 CPUs per node); "
         "partitions with 128 CPUs per node: 'cpu'"),
        ({"mem_gb": "1TB"}, "mem_gb=1024 exceeds partition 'gpu' (max 480 GB per node); "
                            "partitions with 1024 GB: 'gpu-large'"),
        ({"walltime": "3-00:00:00"}, "walltime=72:00:00 exceeds partition 'gpu' (max 24:00:00); "
                                     "no partition of site 'gpucluster' allows more than 48:00:00"),
        ({"partition": "gpu-large", "walltime": "1-00:00:00"},
         "walltime=24:00:00 exceeds partition 'gpu-large' (max 12:00:00); partitions with 24:00:00: 'cpu', 'gpu'"),
        ({"partition": "gpu_large"}, "partition='gpu_large' is not a partition of site 'gpucluster' "
                                     "(did you mean 'gpu-large'?); partitions: cpu, gpu, gpu-large"),
        ({"partition": None, "gpus_per_node": 1},
         "gpus_per_node=1 exceeds partition 'cpu' (max 0); partitions with 1: 'gpu', 'gpu-large'"),
    ],
)
def test_a_request_beyond_a_partition_limit_names_the_limit_and_partitions_that_fit(kwargs, message, tmp_path):
    with pytest.raises(ResourceError) as info:
        Executor(site=gpu_site(), folder=str(tmp_path), **kwargs)
    assert str(info.value) == message
    assert not os.listdir(tmp_path)  # nothing was written, let alone submitted


def test_requests_within_the_limits_pass_and_with_resources_checks_too(tmp_path):
    ex = Executor(site=gpu_site(), folder=str(tmp_path), gpus_per_node=4, nodes=16, walltime="1-00:00:00")
    assert ex.resources.gpus_per_node == 4
    ex = Executor(site=gpu_site(), folder=str(tmp_path), gpus_per_node=4, nodes=8)
    assert ex.with_resources(partition="gpu-large", gpus_per_node=8, walltime="12:00:00").resources.gpus_per_node == 8
    with pytest.raises(ResourceError, match=r"^gpus_per_node=8 exceeds partition 'gpu' \(max 4\); partitions with 8"):
        ex.with_resources(gpus_per_node=8)


def test_a_site_without_partitions_checks_no_limits(tmp_path):
    site = site_from_mapping("plain", {"scheduler": "slurm", "python": sys.executable, "workdir": str(tmp_path)})
    assert Executor(site=site, folder=str(tmp_path), nodes=1000, gpus_per_node=64).resources.nodes == 1000

