"""Fixtures for tests against the live Slurm test cluster (tests/cluster/up, docs/testcluster.md).

``cluster`` (session): checks the cluster is up (sinfo answers and shows 3 responding nodes). When it is not,
the test fails with the reason if CI=true, and is skipped with the reason (and how to start the cluster)
otherwise. It returns a :class:`LiveCluster` with small helpers (``run``, ``sbatch``, ``wait_job``,
``client``) that always use timeouts, so nothing hangs.

``cluster_workdir`` (function): a fresh directory for one test's job files on the shared scratch (or home),
visible on every node. Never use ``tmp_path`` for job files: each node has its own private /tmp.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pytest

NODES = ("node1", "node2", "node3")
CLUSTER_NET_PREFIX = "10.77.0."
STAGE = Path("/opt/hpcbridge-test")
REPO = Path(__file__).resolve().parents[2]
STAGED_CLIENT = STAGE / "src" / "tests" / "cluster" / "client"
#: the staged copy of tests/cluster/ctl: the sudoers rule lets the test user run exactly this path as root
STAGED_CTL = STAGE / "src" / "tests" / "cluster" / "ctl"
LOCAL_CLIENT = Path(__file__).resolve().parents[1] / "cluster" / "client"
UP_HINT = "start it as root with: tests/cluster/up   (see docs/testcluster.md)"
TERMINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
)
# Env that OpenMPI jobs need here. The cluster already sets btl=self,tcp and the TCP interfaces in
# /etc/openmpi/openmpi-mca-params.conf; this is only the extra needed when a test runs as root.
ROOT_MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def _run(args: Sequence[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv lists, no shell
        list(args), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


def cluster_problem() -> str | None:
    """Why the live cluster is not usable, or None when sinfo shows 3 responding nodes."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed (the Slurm client packages are missing)"
    try:
        p = _run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %t"], timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if p.returncode != 0:
        lines = [line.strip() for line in (p.stderr or p.stdout).splitlines() if line.strip()]
        return f"sinfo failed (exit {p.returncode}): {lines[-1][:300] if lines else 'no output'}"
    states = dict(line.split() for line in p.stdout.splitlines() if line.strip())
    if sorted(states) != list(NODES):
        return f"sinfo shows nodes {sorted(states)}, expected {list(NODES)}"
    # a suffix (*, ~, #, %, ...) means not responding / powered down / rebooting
    bad = {n: s for n, s in states.items() if s not in ("idle", "mix", "alloc", "comp", "plnd")}
    if bad:
        return f"nodes not responding or not usable: {bad}"
    return None


_STATUS: dict[str, str | None] = {}


def _status() -> str | None:
    if "problem" not in _STATUS:
        _STATUS["problem"] = cluster_problem()
    return _STATUS["problem"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live: needs the live test cluster (tests/cluster/up)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/live is marked ``live`` (``-m "not live"`` runs the rest), whether or not its module
    says so."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.live)


def pytest_report_header(config: pytest.Config) -> list[str]:
    problem = _status()
    if problem is None:
        return ["live test cluster: up (node1..node3 responding)"]
    ci = os.environ.get("CI", "").lower() == "true"
    return [f"live test cluster: NOT UP: {problem}; live tests will {'FAIL (CI=true)' if ci else 'skip'}; " + UP_HINT]


@dataclass
class Job:
    jobid: str
    state: str
    exit_code: str
    sacct: dict[str, str] = field(default_factory=dict)


#: defined for every laptop program: ``report(**kw)`` prints its RESULT line, ``error(fn)`` is ``[type, message]`` of
#: what ``fn()`` raised, or None
LAPTOP_HELPERS = r'''
import json as _json

def report(**kw):
    print("RESULT " + _json.dumps(kw), flush=True)

def error(fn):
    try:
        fn()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None
'''


@dataclass
class LiveCluster:
    """Helpers around the Slurm commands of the live test cluster (run as the current user)."""

    user: str
    nodes: tuple[str, ...] = NODES
    started: float = field(default_factory=time.time)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        if os.geteuid() == 0:
            env.update(ROOT_MPI_ENV)
        env.update(extra or {})
        return env

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = 60,
        check: bool = True,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with a timeout; with check=True fail the test (showing its output) on exit != 0."""
        try:
            p = _run(args, timeout=timeout, cwd=cwd, env=self.env(env), input=input)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{list(args)} timed out after {timeout} s; output so far: {e.stdout!r} {e.stderr!r}")
        if check and p.returncode != 0:
            pytest.fail(f"{list(args)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def sbatch(self, script: Path, *args: str, workdir: Path, env: Mapping[str, str] | None = None) -> str:
        """Submit a batch script from ``workdir``; returns the job id."""
        p = self.run(["sbatch", "--parsable", "-D", str(workdir), *args, str(script)], cwd=workdir, env=env, timeout=30)
        jobid = p.stdout.strip().split(";")[0]
        assert re.fullmatch(r"\d+", jobid), f"unexpected sbatch output: {p.stdout!r}"
        return jobid

    @property
    def since(self) -> str:
        """sacct's ``-S`` for this test session's jobs only (job ids repeat after a cluster's state is reset)."""
        return f"now-{int(time.time() - self.started) + 120}"

    def ctl(self, *args: str) -> list[str]:
        """The argv of ``tests/cluster/ctl ARGS...`` run as root (the staged copy, through sudo)."""
        return ["sudo", "-n", str(STAGED_CTL), *args]

    def assert_nothing_left(self, before: set[str], jobs_dir: Path) -> None:
        """No job submitted since ``before`` (squeue_ids), and no job folder left in ``jobs_dir``. An earlier
        test's job may leave the queue meanwhile: that is no concern of this one."""
        assert self.squeue_ids() - before == set()
        assert not jobs_dir.exists() or os.listdir(jobs_dir) == []

    def sacct_array(self, array_id: str, count: int, timeout: float = 120) -> dict[str, str]:
        """The array's tasks as sacct reports them ({task id: state}), once all ``count`` have reached
        accounting in a final state."""
        deadline = time.time() + timeout
        while True:
            out = self.run(["sacct", "-n", "-X", "-P", "-S", self.since, "-j", array_id, "-o", "JobID,State"],
                           timeout=60).stdout
            rows = dict(line.split("|", 1) for line in out.split())
            if len(rows) == count and not {"RUNNING", "PENDING"} & set(rows.values()):
                return rows
            assert time.time() < deadline, f"sacct shows {len(rows)} of {count} tasks: {rows}"
            time.sleep(1)

    def jobs_tagged(self, tag: str, job_id: str, timeout: float = 60) -> list[str]:
        """The ids of the jobs sacct shows with the comment ``hpcbridge:TAG``, once it shows ``job_id`` among them
        (slurmdbd fills in a new job's comment a moment after the job is known), or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(["sacct", "-n", "-X", "-P", "-S", self.since, "--format=JobID,Comment"],
                           timeout=60).stdout
            jobs = [job for job, _, comment in (line.partition("|") for line in out.splitlines())
                    if comment == f"hpcbridge:{tag}"]
            if job_id in jobs or time.monotonic() > deadline:
                return jobs
            time.sleep(1)

    def squeue_ids(self) -> set[str]:
        """The ids of this user's jobs and array tasks in the queue now."""
        out = self.run(["squeue", "--me", "--noheader", "--array", "--format=%i"], timeout=30).stdout
        return set(out.split())

    def sacct(self, jobid: str) -> dict[str, str]:
        """The accounting record of the job allocation (sacct -X), {} while slurmdbd has none yet."""
        fields = ["JobID", "JobName", "State", "ExitCode", "NodeList", "NNodes", "Partition", "User"]
        p = self.run(["sacct", "-n", "-X", "-P", "-S", self.since, "-j", jobid, "-o", ",".join(fields)], timeout=30,
                     check=False)
        found: dict[str, str] = {}
        for line in p.stdout.splitlines():  # the newest record wins: ids repeat after a cluster's state reset
            values = line.split("|")
            if len(values) == len(fields) and values[0] == jobid:
                found = dict(zip(fields, values))
        return found

    def wait_job(self, jobid: str, timeout: float = 180) -> Job:
        """Poll sacct until the job reached a final state (a few seconds for small jobs here)."""
        deadline = time.monotonic() + timeout
        rec: dict[str, str] = {}
        while time.monotonic() < deadline:
            rec = self.sacct(jobid)
            state = rec.get("State", "")
            if state.split(" ")[0] in TERMINAL_STATES:
                return Job(jobid, state.split(" ")[0], rec.get("ExitCode", ""), rec)
            time.sleep(0.5)
        squeue = self.run(["squeue", "-j", jobid, "-o", "%i %T %r %N"], check=False, timeout=30).stdout
        pytest.fail(f"job {jobid} did not finish within {timeout} s; sacct: {rec}; squeue: {squeue}")

    def laptop_python(self, program: str, *, timeout: float = 300) -> dict[str, Any]:
        """Run a Python ``program`` on the user's laptop with the working tree's hpcbridge and site-configs; the
        JSON of its last ``RESULT {...}`` line, plus ``_stderr``. The site-configs come from the working tree
        because tests/cluster/up run from another checkout (the stage) removes /etc/hpcbridge/sites files that
        checkout does not have."""
        env = ["env", f"PYTHONPATH={REPO}", f"HPCBRIDGE_SITES_PATH={REPO / 'site-configs'}"]
        p = self.client([*env, str(STAGE / "venv" / "bin" / "python"), "-c", LAPTOP_HELPERS + program],
                        timeout=timeout)
        lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            pytest.fail(f"laptop program failed (exit {p.returncode})\nstdout:\n{p.stdout}\n"
                        f"stderr:\n{p.stderr[-6000:]}")
        out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
        out["_stderr"] = p.stderr
        return out

    def client(
        self,
        args: Sequence[str],
        *,
        timeout: float = 60,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the user's "laptop" (the client namespace), never raising on exit != 0."""
        if os.geteuid() == 0:
            cmd = [str(LOCAL_CLIENT)]
        else:
            cmd = ["sudo", "-n", str(STAGED_CLIENT)]
        if user:
            cmd += ["--user", user]
        try:
            return _run([*cmd, *args], timeout=timeout)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"client {list(args)} timed out after {timeout} s; output so far: {e.stdout!r} {e.stderr!r}")


@pytest.fixture(scope="session")
def cluster() -> LiveCluster:
    problem = _status()
    if problem is not None:
        msg = f"the live test cluster is not up: {problem}; {UP_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return LiveCluster(user=getpass.getuser())


@pytest.fixture(scope="session")
def _cluster_session_dir(cluster: LiveCluster, request: pytest.FixtureRequest) -> Iterator[Path]:
    """One directory per pytest session on the shared scratch (else home); removed if every test passed."""
    scratch = Path("/scratch") / cluster.user
    base = scratch if scratch.is_dir() and os.access(scratch, os.W_OK) else Path.home()
    d = base / "hpcbridge-tests" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    yield d
    if request.session.testsfailed == 0:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def ex(cluster: LiveCluster, cluster_workdir: Path) -> Any:
    """An Executor on the site "testcluster" whose job folders go into this test's directory (``jobs/``)."""
    from hpcbridge import Executor

    return Executor(site="testcluster", folder=str(cluster_workdir / "jobs"))


@pytest.fixture()
def cluster_workdir(_cluster_session_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for this test's job files, visible on every node (never under /tmp)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{request.node.module.__name__}-{request.node.name}")[:120]
    d = _cluster_session_dir / name
    d.mkdir()
    return d
