"""The hpcbridge command end to end against the live Slurm test cluster, through subprocesses as a user runs it.

Run as alice (see docs/testcluster.md). Each test checks what a user sees: output, exit code, and what the
scheduler has (sacct, squeue).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import LiveCluster  # tests/live/conftest.py

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2", "node3")


def _command() -> list[str]:
    """The installed console script next to this python (proves the entry point), else python -m."""
    script = Path(sys.executable).parent / "hpcbridge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hpcbridge.cli"]


@pytest.fixture
def hb(cluster: LiveCluster, cluster_workdir: Path, monkeypatch: pytest.MonkeyPatch):
    """``hb(*args)``: run hpcbridge in the test's shared folder (jobs start there), with a private user config."""
    xdg = cluster_workdir / "xdg"
    (xdg / "hpcbridge" / "sites").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.delenv("HPCBRIDGE_SITE", raising=False)

    def run(*args: str, rc: int | None = 0, timeout: float = 480) -> subprocess.CompletedProcess[str]:
        try:
            p = subprocess.run([*_command(), *args], capture_output=True, text=True, cwd=str(cluster_workdir),
                               timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"hpcbridge {list(args)} did not finish in {timeout} s: {exc.stdout!r} {exc.stderr!r}")
        if rc is not None:
            assert p.returncode == rc, f"hpcbridge {list(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    run.dir = cluster_workdir  # type: ignore[attr-defined]
    run.xdg = xdg  # type: ignore[attr-defined]
    yield run
    run("cancel", "--all", rc=None, timeout=120)  # this test's registry: leave nothing in the queue


def _squeue(cluster: LiveCluster, job_id: str) -> str:
    return cluster.run(["squeue", "--noheader", "-j", job_id, "-o", "%i %T"], check=False, timeout=30).stdout.strip()


def test_a_command_runs_on_a_node_and_wait_returns_its_output_and_exit_status(hb, cluster):
    p = hb("submit", "--site", "testcluster", "--wait", "--timeout", "400", "--", "hostname")
    assert p.stdout.strip() in NODES
    p = hb("submit", "--site", "testcluster", "--wait", "--timeout", "400", "--",
           "sh", "-c", "echo to-stderr >&2; exit 7", rc=7)
    assert p.stderr == "to-stderr\n"


def test_a_function_job_from_submit_to_status_logs_and_result(hb, cluster):
    (hb.dir / "jobs_mod.py").write_text(textwrap.dedent("""\
        import socket

        def double(x):
            print("doubling", x, "on", socket.gethostname(), flush=True)
            return int(x) * 2

        def broken():
            raise ValueError("bad input")
    """))
    job_id = hb("submit", "--site", "testcluster", "-J", "cli-double", "jobs_mod:double", "21").stdout.strip()
    assert re.fullmatch(r"\d+", job_id), job_id
    assert hb("result", job_id, "--timeout", "400").stdout == "42\n"
    record = cluster.wait_job(job_id, timeout=300)
    assert record.state == "COMPLETED"
    log = hb("logs", job_id, "--stdout").stdout
    assert re.fullmatch(r"doubling 21 on node[123]\n", log), log
    rows = [line.split("\t") for line in hb("status", "--site", "testcluster").stdout.splitlines()]
    assert rows[0][:4] == [job_id, "testcluster", "COMPLETED", "jobs_mod.double"], rows

    p = hb("submit", "--site", "testcluster", "--wait", "--timeout", "400", "jobs_mod:broken", rc=1)
    assert re.search(r"^Remote traceback \(job \d+, host node[123]\):$", p.stderr, re.M), p.stderr
    assert ", in broken\nValueError: bad input\n" in p.stderr
    assert re.search(r"^hpcbridge: error: job \d+ failed: ValueError: bad input$", p.stderr, re.M), p.stderr


def test_cancel_leaves_nothing_in_the_queue(hb, cluster):
    first = hb("submit", "--site", "testcluster", "--", "sleep", "300").stdout.strip()
    second = hb("submit", "--site", "testcluster", "--", "sleep", "300").stdout.strip()
    deadline = time.monotonic() + 400
    rows: dict[str, list[str]] = {}
    while time.monotonic() < deadline:  # status asks sacct, which follows slurmctld by a few seconds
        rows = {r[0]: r for r in (line.split("\t") for line in hb("status").stdout.splitlines())}
        if rows[first][2] == "RUNNING":
            break
        time.sleep(2)
    assert rows[first][2] == "RUNNING" and rows[first][5] in NODES, rows  # live state and node from the scheduler
    assert rows[second][2] in ("PENDING", "RUNNING"), rows
    assert hb("cancel", first).stdout == f"{first}\n"
    assert hb("cancel", "--all", "--site", "testcluster").stdout == f"{second}\n"
    deadline = time.monotonic() + 60
    while (_squeue(cluster, first) or _squeue(cluster, second)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _squeue(cluster, first) and not _squeue(cluster, second)
    assert cluster.wait_job(first, timeout=60).state == "CANCELLED"
    assert cluster.wait_job(second, timeout=60).state == "CANCELLED"
    states = {r["job_id"]: r["state"] for r in json.loads(hb("status", "--json").stdout)}
    assert states == {first: "CANCELLED", second: "CANCELLED"}
    p = hb("cancel", first)
    assert p.stdout == "" and p.returncode == 0  # already ended: nothing to do


def test_logs_follow_streams_until_the_job_ends(hb, cluster):
    job_id = hb("submit", "--site", "testcluster", "--", "sh", "-c",
                "for i in 1 2 3; do echo line $i; sleep 1; done").stdout.strip()
    started = time.monotonic()
    p = hb("logs", job_id, "-f", timeout=480)
    assert p.stdout == "line 1\nline 2\nline 3\n"
    assert time.monotonic() - started < 470
    assert cluster.wait_job(job_id, timeout=60).state == "COMPLETED"


def test_a_request_beyond_a_partition_limit_fails_before_anything_is_submitted(hb, cluster):
    p = hb("submit", "--site", "testcluster", "--nodes", "4", "--", "hostname", rc=2)
    assert p.stderr == (
        "hpcbridge: error: nodes=4 exceeds partition 'debug' (max 3); "
        "no partition of site 'testcluster' allows more than 3\n"
        "hint: `hpcbridge sites show testcluster` lists the partitions and their limits\n"
    )
    p = hb("submit", "--site", "testcluster", "-p", "short", "-t", "00:30:00", "--", "hostname", rc=2)
    assert p.stderr.splitlines()[0] == (
        "hpcbridge: error: walltime=00:30:00 exceeds partition 'short' (max 00:05:00); "
        "partitions with 00:30:00: 'debug'"
    )
    assert json.loads(hb("status", "--json").stdout) == []


def test_discover_writes_a_config_that_validates_and_submits(hb, cluster):
    target = hb.xdg / "hpcbridge" / "sites" / "discovered.toml"
    p = hb("sites", "discover", "-o", str(target))
    assert p.stderr.startswith(f"wrote {target} (site 'discovered': slurm, transport local, partitions debug, short")
    text = target.read_text()
    assert "[partitions.debug]\n# 3 nodes, state UP\ndefault = true\nmax_nodes = 3\ncpus_per_node = 2\n" in text
    assert 'max_walltime = "00:05:00"' in text and "gpus_per_node = 0" in text
    assert hb("sites", "check", str(target)).stdout.startswith(f"ok\t{target}\tslurm, transport local")
    assert "discovered\tslurm\tlocal\tuser" in hb("sites", "list").stdout
    p = hb("submit", "--site", "discovered", "--wait", "--timeout", "400", "--", "hostname")
    assert p.stdout.strip() in NODES
    p = hb("submit", "--site", "discovered", "-c", "4", "--", "hostname", rc=2)
    assert p.stderr.splitlines()[0] == (
        "hpcbridge: error: cpus_per_task=4 exceeds partition 'debug' (max 2 CPUs per node); "
        "no partition of site 'discovered' allows more than 2 CPUs per node"
    )
    hb("sites", "discover", "-o", str(target), rc=2)  # never overwrites without --force


def test_sites_show_origin_points_at_the_installed_file(hb, cluster):
    out = hb("sites", "show", "testcluster", "--origin").stdout
    (line,) = [x for x in out.splitlines() if x.startswith("python =")]
    assert re.fullmatch(r'python = "[^"]+"\s+# /etc/hpcbridge/sites/testcluster\.toml:\d+', line), line
