"""The site-config's ``[mpi] env`` reaches every job of the site, whatever starts it (docs/multinode.md, "MPI"):
a job without a launcher and a torchrun job see it on the live cluster, over ``[env]`` where both set a variable."""

from __future__ import annotations

import os

from hpcbridge import Executor, load_site

#: the test cluster's [env] sets OMPI_MCA_btl = "self,tcp": [mpi] env's value wins
MPI_ENV = {"HPCBRIDGE_TEST_MPI_ENV": "from the site's [mpi] env", "OMPI_MCA_btl": "self,vader,tcp"}


def seen(names):
    return {name: os.environ.get(name) for name in names}


def test_the_sites_mpi_env_reaches_a_job_without_launcher_and_a_torchrun_job(cluster, cluster_workdir):
    site = load_site("testcluster", mpi={"env": MPI_ENV})
    folder = str(cluster_workdir / "jobs")
    plain = Executor(site=site, folder=folder)
    torchrun = Executor(site=site, folder=folder, launcher="torchrun", mem_gb=1.5)  # torch's agent needs the memory
    jobs = []
    try:
        jobs = [plain.submit(seen, list(MPI_ENV)), torchrun.submit(seen, list(MPI_ENV))]
        assert jobs[0].result(timeout=300) == MPI_ENV
        assert jobs[1].results(timeout=300) == [MPI_ENV]  # torchrun's one worker
        assert "torch.distributed.run" in jobs[1].script and "HPCBRIDGE_LAUNCHER" not in jobs[0].script
    finally:
        for ex in (plain, torchrun):  # a failed test leaves nothing running on the cluster
            ex.shutdown(wait=False, cancel_futures=True)
