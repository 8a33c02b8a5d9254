"""Containers on the live test cluster (docs/containers.md): Charliecloud (Debian's charliecloud-runtime) runs each
job's per-rank worker in the images that tests/cluster/images builds under /var/lib/hpcbridge-testcluster/images,
while the batch script, the launch step and the launcher stay on the host.

The jobs run this checkout's hpcbridge: the site's env sets PYTHONPATH to it and the test binds its top-level
directory (/work, or /opt for the staged copy) into the image; the image's own hpcbridge (installed from the stage
by tests/cluster/images) is what the image check before the first submission finds. The site-configs come from this
checkout (HPCBRIDGE_SITES_PATH), whose testcluster sites say `[container] runtime = "charliecloud"`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

import cloudpickle
import pytest

import hpcbridge
from hpcbridge import Executor, load_site
from hpcbridge.errors import ConfigError, ContainerError, JobLostError, ResourceError

if TYPE_CHECKING:
    from conftest import LiveCluster

REPO = Path(__file__).resolve().parents[2]
IMAGES = Path("/var/lib/hpcbridge-testcluster/images")
WORKER = str(IMAGES / "worker")
#: the checkout's top-level directory: bound into the image so that the jobs import this checkout's hpcbridge
TOP = "/" + REPO.parts[1]
MARK = "hello from the worker image"
IN_IMAGE = {"pretty_name": "Debian GNU/Linux 12 (bookworm)", "ch_running": "Weird Al Yankovic"}
#: the cluster is shared with other test runs, and a 3 x 2 job needs every CPU: allow for queueing
WAIT_S = 600
OURS = f"{sys.version_info[0]}.{sys.version_info[1]}"
WANTED = f"'hpcbridge=={hpcbridge.__version__}' 'cloudpickle=={cloudpickle.__version__}'"


@pytest.fixture(autouse=True)
def _this_checkouts_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCBRIDGE_SITES_PATH", str(REPO / "site-configs"))


@pytest.fixture(scope="module")
def images(cluster: LiveCluster) -> Path:
    missing = [n for n in ("worker", "bare", "cloudpickle2", "python39") if not (IMAGES / n / "usr").is_dir()]
    if missing:
        pytest.fail(f"the test images {missing} are missing under {IMAGES}: run tests/cluster/up (it runs "
                    "tests/cluster/images)")
    return IMAGES


@pytest.fixture
def make(cluster: LiveCluster, images: Path, cluster_workdir: Path) -> Any:
    """Executors on a testcluster site whose jobs run in the worker image (unless told otherwise)."""
    made: List[Executor] = []

    def make(site: str = "testcluster", env: Dict[str, str] | None = None, **resources: Any) -> Executor:
        # PMIX_MCA_gds=hash: the PMIx server's shared-memory store is in slurmd's spool, which the image does not
        # see; PMIx then says so on stderr and falls back to this (docs/containers.md)
        loaded = load_site(site, env={"PYTHONPATH": str(REPO), "PMIX_MCA_gds": "hash", **(env or {})})
        resources.setdefault("walltime", "00:05:00")
        resources.setdefault("container", WORKER)
        resources.setdefault("container_binds", [TOP])
        ex = Executor(site=loaded, folder=str(cluster_workdir / "jobs"), **resources)
        made.append(ex)
        return ex

    yield make
    for ex in made:  # a failed test leaves nothing running on the cluster
        ex.shutdown(wait=False, cancel_futures=True)


# -- callables --------------------------------------------------------------------------------------------------
def in_image() -> Any:
    import hpcbridge_testimage  # only the worker image has it

    return hpcbridge_testimage.MARK, hpcbridge_testimage.where()


def boom(x: int) -> None:
    raise ValueError(f"bad input {x} in {os.environ.get('CH_RUNNING')}")


def square_where(x: int) -> Any:
    return x * x, os.environ.get("CH_RUNNING")


def mpi_rank() -> Dict[str, Any]:
    import socket

    import mpi4py
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return {"rank": comm.Get_rank(), "size": comm.Get_size(), "sum": comm.allreduce(comm.Get_rank()),
            "host": socket.gethostname(), "env_rank": hpcbridge.environment().rank, "mpi4py": mpi4py.__file__,
            "in_image": os.environ.get("CH_RUNNING")}


def torch_sum() -> Dict[str, Any]:
    import torch
    import torch.distributed as dist

    env = hpcbridge.init_torch_distributed(timeout_s=120)
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)
    backend = dist.get_backend()
    dist.destroy_process_group()
    return {"sum": t.item(), "rank": env.rank, "host": env.hostname, "backend": backend, "torch": torch.__file__}


SEEN = ("SUBMIT_ONLY", "DECLARED_ONE", "SITE_VAR", "LD_LIBRARY_PATH", "HOME", "PATH", "SLURM_PROCID", "SLURM_NODEID",
        "SLURM_LOCALID", "SLURM_NTASKS", "HPCBRIDGE_TASK", "HPCBRIDGE_LAUNCHER", "CH_RUNNING")


def environment() -> Dict[str, Any]:
    return {name: os.environ.get(name) for name in SEEN}


# -- 1. a module only the image has -----------------------------------------------------------------------------
def test_a_module_only_the_image_has_is_there_in_the_container_and_missing_without(make: Any) -> None:
    job = make().submit(in_image)
    on_host = make(container=None).submit(in_image)
    assert job.result(WAIT_S) == (MARK, IN_IMAGE)
    with pytest.raises(ModuleNotFoundError, match="^No module named 'hpcbridge_testimage'$"):
        on_host.result(WAIT_S)
    assert "ch-run" in job.script and "ch-run" not in on_host.script


def test_the_image_and_its_digest_are_recorded_in_meta_registry_status_and_table(
    make: Any, cluster: LiveCluster
) -> None:
    job = make().submit(in_image)
    assert job.result(WAIT_S) == (MARK, IN_IMAGE)
    meta = json.loads(Path(job.folder, "meta.json").read_text())
    # the digest of a directory image: its manifest (type, mode, size, mtime, path, link of every entry), as find
    # lists it here
    listing = subprocess.run(["find", WORKER, "-printf", "%y %m %s %T@ %P -> %l\\0"], capture_output=True,
                             check=True, timeout=120).stdout.decode()
    manifest = hashlib.sha256("\n".join(sorted(e for e in listing.split("\0") if e)).encode()).hexdigest()
    assert meta["container"] == {"runtime": "charliecloud", "binary": "ch-run", "image": WORKER,
                                 "digest": f"manifest-sha256:{manifest}", "python": meta["container"]["python"]}
    assert meta["container"]["python"].startswith(OURS + ".")
    assert job.image == f"{WORKER}@{manifest[:12]}"
    assert f"<code>{WORKER}@{manifest[:12]}</code>" in job._repr_html_()
    status = subprocess.run([sys.executable, "-m", "hpcbridge.cli", "status", "--json", "--no-refresh"],
                            capture_output=True, text=True, timeout=120, check=True)
    rows = [r for r in json.loads(status.stdout) if r["job_id"] == job.job_id]
    assert [r["container"] for r in rows] == [meta["container"]]
    table = subprocess.run([sys.executable, "-m", "hpcbridge.cli", "status", "--no-refresh"], capture_output=True,
                           text=True, timeout=120, check=True).stdout
    assert table.startswith(f"{job.job_id}\ttestcluster\t") and table.rstrip().endswith(f"\t{WORKER}@{manifest[:12]}")


# -- 2. an exception inside ---------------------------------------------------------------------------------------
def test_an_exception_inside_the_container_comes_back_as_itself(make: Any) -> None:
    job = make().submit(boom, 42)
    with pytest.raises(ValueError, match="^bad input 42 in Weird Al Yankovic$") as info:
        job.result(WAIT_S)
    remote = str(info.value.__cause__)
    assert remote.startswith(f"Remote traceback (job {job.job_id}, host node")
    assert ", in boom\nValueError: bad input 42 in Weird Al Yankovic\n" in remote


# -- 3. arrays and bundles ----------------------------------------------------------------------------------------
def test_map_of_50_calls_in_order_and_bundled_map_jobs(make: Any) -> None:
    ex = make()
    bundled = ex.map_jobs(square_where, range(50), chunksize=10)  # submitted first: both arrays run together
    assert list(ex.map(square_where, range(50), timeout=WAIT_S)) == [(x * x, "Weird Al Yankovic") for x in range(50)]
    assert bundled.results(WAIT_S) == [(x * x, "Weird Al Yankovic") for x in range(50)]
    array_id = bundled[0].job_id.split("_")[0]
    assert sorted({job.job_id for job in bundled}) == [f"{array_id}_{t}" for t in range(5)]


# -- 4. MPI across nodes: the launcher on the host, one container per rank -------------------------------------------
def test_mpi4py_allreduce_3x2_with_srun_and_mpirun_starting_the_runtime_per_rank(make: Any) -> None:
    jobs = {launcher: make(nodes=3, tasks_per_node=2, launcher=launcher).submit(mpi_rank)
            for launcher in ("srun", "mpirun")}
    for launcher, job in jobs.items():
        ranks = job.results(WAIT_S)
        assert [r["rank"] for r in ranks] == [r["env_rank"] for r in ranks] == list(range(6)), launcher
        assert {(r["size"], r["sum"], r["in_image"]) for r in ranks} == {(6, 15, "Weird Al Yankovic")}, launcher
        assert sorted(r["host"] for r in ranks) == ["node1", "node1", "node2", "node2", "node3", "node3"], launcher
        # Debian's mpi4py of the image (the host's venv has another), with the image's OpenMPI
        assert {r["mpi4py"] for r in ranks} == {"/usr/lib/python3/dist-packages/mpi4py/__init__.py"}, launcher
        last = job.script.strip().splitlines()[-1]
        assert re.search(rf" -- {'srun --mpi=pmix' if launcher == 'srun' else 'mpirun -np 6'} .* ch-run ", last)


# -- 5. torch.distributed across nodes inside the image --------------------------------------------------------------
def test_torch_gloo_all_reduce_on_3_nodes_inside_the_image_with_srun_and_torchrun(make: Any) -> None:
    # torch needs more than the site's default memory (torchrun: its agent too), as in test_multinode_live.py
    jobs = {launcher: make(nodes=3, tasks_per_node=1, launcher=launcher, mem_gb=mem).submit(torch_sum)
            for launcher, mem in (("srun", 1), ("torchrun", 1.5))}
    for launcher, job in jobs.items():
        ranks = job.results(WAIT_S)
        assert [(r["rank"], r["sum"], r["backend"]) for r in ranks] == [(i, 6.0, "gloo") for i in range(3)], launcher
        assert sorted(r["host"] for r in ranks) == ["node1", "node2", "node3"], launcher
        assert {r["torch"] for r in ranks} == {"/usr/local/lib/python3.11/dist-packages/torch/__init__.py"}, launcher


# -- 6. the CLI --------------------------------------------------------------------------------------------------
def test_cli_submit_container_command_prints_the_output_from_inside_the_image(images: Path) -> None:
    program = "import hpcbridge_testimage as m, sys; print(m.MARK, sys.version_info[:2], m.where()['pretty_name'])"
    p = subprocess.run(
        [sys.executable, "-m", "hpcbridge.cli", "submit", "--site", "testcluster", "--container", WORKER,
         "--bind", TOP, "--container-env", "PYTHONPATH", "--wait", "--timeout", str(WAIT_S), "--",
         "python3", "-c", program],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=WAIT_S + 60,
    )
    assert (p.returncode, p.stdout) == (0, f"{MARK} (3, {sys.version_info[1]}) Debian GNU/Linux 12 (bookworm)\n"), \
        p.stderr


# -- 7. the environment allow-list ------------------------------------------------------------------------------------
def test_only_the_allowed_variables_reach_the_callable(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUBMIT_ONLY", "set in the submitting shell")
    monkeypatch.setenv("DECLARED_ONE", "declared with container_env")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/host/only/lib")
    env = {"SITE_VAR": "from the site's env"}
    contained = make(env=env, nodes=2, launcher="srun", container_env=["DECLARED_*"]).submit(environment)
    on_host = make(env=env, container=None).submit(environment)
    ranks = contained.results(WAIT_S)
    assert [(r["SLURM_PROCID"], r["SLURM_NODEID"], r["SLURM_LOCALID"], r["SLURM_NTASKS"]) for r in ranks] == [
        ("0", "0", "0", "2"), ("1", "1", "0", "2")]
    for r in ranks:
        assert r["SUBMIT_ONLY"] is None and r["LD_LIBRARY_PATH"] is None and r["HOME"] is None
        assert (r["DECLARED_ONE"], r["SITE_VAR"]) == ("declared with container_env", "from the site's env")
        assert (r["HPCBRIDGE_TASK"], r["HPCBRIDGE_LAUNCHER"], r["CH_RUNNING"]) == ("0", "srun", "Weird Al Yankovic")
        assert r["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    host = on_host.result(WAIT_S)  # without a container the whole submitting environment reaches the job
    assert (host["SUBMIT_ONLY"], host["LD_LIBRARY_PATH"], host["CH_RUNNING"]) == (
        "set in the submitting shell", "/host/only/lib", None)


# -- 8. bad input ----------------------------------------------------------------------------------------------------
def test_bad_images_and_runtimes_are_refused_before_anything_is_submitted(
    make: Any, cluster: LiveCluster, cluster_workdir: Path
) -> None:
    before = cluster.squeue_ids()
    where = "site 'testcluster': the container image"
    fix = "containers/ has recipes (docs/containers.md)"
    cases = [
        ({"container": "/var/lib/hpcbridge-testcluster/images/no-such-image"}, ContainerError,
         re.escape(f"{where} /var/lib/hpcbridge-testcluster/images/no-such-image does not exist on the cluster (")
         + r"stat: cannot stat.*No such file or directory\)\. Fix: build or copy the image there "
         + re.escape("(docs/containers.md, containers/), or give the path of one that exists (container=..., "
                     "[container] image)")),
        ({"container": str(IMAGES / "bare")}, ContainerError,
         re.escape(f"{where} {IMAGES}/bare (charliecloud) cannot run these jobs: cloudpickle is not installed in it; "
                   "hpcbridge is not installed in it. Fix: install them into the image (/usr/bin/python3 -m pip "
                   f"install {WANTED}); {fix}")),
        ({"container": str(IMAGES / "cloudpickle2")}, ContainerError,
         re.escape(f"{where} {IMAGES}/cloudpickle2 (charliecloud) cannot run these jobs: cloudpickle ")
         + r"2\.\d+\.\d+" + re.escape(f" in the image, {cloudpickle.__version__} here. Fix: install them into the "
                                       f"image (/usr/bin/python3 -m pip install {WANTED}); {fix}")),
        ({"container": str(IMAGES / "python39")}, ContainerError,
         re.escape(f"{where} {IMAGES}/python39 (charliecloud) cannot run these jobs: Python ") + r"3\.9\.\d+"
         + re.escape(f" in the image, {sys.version.split()[0]} here (major.minor must match). Fix: build the image "
                     f"with Python {OURS} and {WANTED} installed; {fix}")),
        ({"container_binds": [TOP, "/scratch:/no-such-target"]}, ContainerError,
         re.escape(f"{where} {WORKER} (charliecloud) has no directory for the bind target(s) /no-such-target, and "
                   "ch-run cannot create one in a read-only image. Fix: create them in the image (e.g. mkdir -p "
                   "IMAGE/no-such-target; containers/charliecloud.sh makes /home /scratch /work /project /mnt/0-9), "
                   "or bind to a directory it has (SRC:/mnt/0)")),
        ({"container_runtime": "apptainer"}, ContainerError,
         re.escape("site 'testcluster': the container runtime 'apptainer' is not installed on the cluster: neither "
                   "'apptainer' nor 'singularity' is on the login node's PATH. Fix: install it there, set "
                   "[container] runtime in the site-config of 'testcluster' to a runtime the cluster has "
                   "(apptainer, singularity, charliecloud, pyxis), or set [container] check = false when it exists "
                   "on the compute nodes only")),
        ({"container_runtime": "charlicloud"}, ResourceError,
         re.escape("container_runtime='charlicloud' is not known (did you mean 'charliecloud'?); use one of "
                   "apptainer, singularity, charliecloud, pyxis (or None: the site-config's [container] runtime)")),
    ]
    for resources, error, message in cases:
        with pytest.raises(error) as info:
            make(**resources).submit(in_image)
        assert re.fullmatch(message, str(info.value)), (resources, str(info.value))
    with pytest.raises(ConfigError, match=r"container\.runtime: 'dockr' is not one of 'apptainer', 'singularity', "
                                          r"'charliecloud', 'pyxis'"):
        load_site("testcluster", container={"runtime": "dockr"})
    cluster.assert_nothing_left(before, cluster_workdir / "jobs")


def test_a_bind_source_missing_on_the_node_fails_the_job_naming_it(make: Any, cluster: LiveCluster) -> None:
    job = make(container_binds=[TOP, "/scratch/hpcbridge-no-such-dir:/mnt/0"]).submit(in_image)
    with pytest.raises(JobLostError) as info:
        job.result(WAIT_S)
    assert re.search(r"^hpcbridge: the container bind source /scratch/hpcbridge-no-such-dir does not exist on "
                     r"node[123]; bind paths that every node has$", str(info.value), re.M), str(info.value)
    assert "Traceback" not in str(info.value)
    assert job.job_id not in cluster.squeue_ids()


# -- 9. over SSH ---------------------------------------------------------------------------------------------------
def test_over_ssh_a_module_only_the_image_has(cluster: LiveCluster, images: Path) -> None:
    program = f"""
import json
from hpcbridge import Executor, load_site
site = load_site("testcluster-ssh", env={{"PYTHONPATH": {str(REPO)!r}}})
ex = Executor(site=site, container={WORKER!r}, container_binds=[{TOP!r}], walltime="00:05:00")
def in_image():
    import hpcbridge_testimage
    return hpcbridge_testimage.MARK, hpcbridge_testimage.where()
job = ex.submit(in_image)
print("RESULT " + json.dumps({{"value": job.result(300), "image": job.image, "script": job.script}}))
"""
    out = cluster.laptop_python(program, timeout=WAIT_S)
    assert out["value"] == [MARK, IN_IMAGE]
    assert out["image"].startswith(f"{WORKER}@") and " ch-run " in out["script"]


# -- PBS (the Torque-compatible wrappers) ---------------------------------------------------------------------------
def test_on_pbs_through_the_torque_wrappers(make: Any) -> None:
    job = make(site="testcluster-pbs").submit(in_image)
    assert job.result(WAIT_S) == (MARK, IN_IMAGE)
    assert "#PBS " in job.script and " ch-run " in job.script
