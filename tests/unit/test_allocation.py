"""The in-job allocation table (hpcbridge.schedulers.allocation): data the worker can import cheaply."""

import subprocess
import sys

import pytest

from hpcbridge.schedulers import allocation


def test_importing_the_table_imports_no_adapter_and_nothing_of_the_client():
    code = "import sys, hpcbridge.schedulers.allocation; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    ours = {m for m in out.split() if m.startswith("hpcbridge")}
    assert ours == {"hpcbridge", "hpcbridge._version", "hpcbridge.schedulers", "hpcbridge.schedulers.allocation"}


def test_every_scheduler_declares_its_job_id_and_a_way_to_its_nodes():
    assert [a.scheduler for a in allocation.ALLOCATIONS] == ["slurm", "pbs"]  # the order they are tried in
    for a in allocation.ALLOCATIONS:
        assert a.job_id_vars and (a.nodelist_vars or a.nodefile_var)
    assert allocation.LOCAL not in allocation.ALLOCATIONS and not allocation.LOCAL.job_id_vars  # the fallback
    with pytest.raises(AttributeError):
        allocation.SLURM.scheduler = "lsf"
