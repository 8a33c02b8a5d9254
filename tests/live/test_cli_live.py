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


# -- exit codes ------------------------------------------------------------------------------------------------
def _job_folders() -> set[str]:
    root = Path.home() / ".hpcbridge" / "jobs"  # the testcluster site's workdir
    return set(os.listdir(root)) if root.is_dir() else set()


def test_a_scheduler_rejection_exits_3_with_one_line_and_leaves_nothing_behind(hb, cluster):
    before = _job_folders()
    p = hb("submit", "--site", "testcluster", "-J", "cli-rejected", "--directive=--constraint=nonexistent", "--",
           "hostname", rc=3)
    lines = p.stderr.splitlines()
    assert lines[0] == ("hpcbridge: error: could not submit the job on site 'testcluster': "
                        "sbatch: error: Batch job submission failed: Invalid feature specification"), p.stderr
    assert re.fullmatch(r"hint: the command was: sbatch --parsable \S+/script\.sh", lines[1]), p.stderr
    assert len(lines) == 2 and "Traceback" not in p.stderr and p.stdout == ""
    assert json.loads(hb("status", "--json").stdout) == []  # not in the registry
    assert _job_folders() == before  # its job folder was removed
    assert cluster.run(["squeue", "-h", "-n", "cli-rejected"], timeout=30).stdout == ""


def test_wait_with_a_timeout_exits_5_and_the_job_stays_on_the_cluster(hb, cluster):
    p = hb("submit", "--site", "testcluster", "--wait", "--timeout", "6", "--", "sleep", "300", rc=5)
    m = re.fullmatch(r"hpcbridge: error: job (\d+) is still (PENDING|RUNNING) \(it stays on the cluster\)\n"
                     r"hint: hpcbridge result (\d+) waits for it; hpcbridge cancel (\d+) stops it\n", p.stderr)
    assert m and m[1] == m[3] == m[4] and p.stdout == "", p.stderr
    job_id = m[1]
    assert _squeue(cluster, job_id).split()[1] in ("PENDING", "RUNNING")  # not cancelled on the way out
    (record,) = json.loads(hb("status", "--json").stdout)
    assert record["job_id"] == job_id and record["state"] in ("PENDING", "RUNNING")
    p = hb("result", job_id, "--timeout", "2", rc=5)  # and `result` gives up the same way
    assert p.stderr.startswith(f"hpcbridge: error: job {job_id} is still ")
    assert hb("cancel", job_id).stdout == f"{job_id}\n"
    assert cluster.wait_job(job_id, timeout=60).state == "CANCELLED"


def test_ctrl_c_while_waiting_exits_130_and_the_job_stays_on_the_cluster(hb, cluster):
    import signal
    import uuid

    name = f"cli-sigint-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([*_command(), "submit", "--site", "testcluster", "-J", name, "--wait", "--", "sleep",
                             "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(hb.dir))
    try:
        deadline = time.monotonic() + 120
        job_id = ""
        while not job_id and time.monotonic() < deadline and proc.poll() is None:  # submitted and recorded
            rows = json.loads(hb("status", "--json", "--no-refresh").stdout)
            job_id = rows[0]["job_id"] if rows else ""
            time.sleep(0.5)
        assert job_id, proc.communicate(timeout=30)
        time.sleep(1.5)  # in the waiting loop by now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert re.fullmatch(rf"hpcbridge: error: interrupted; job {job_id} is still (PENDING|RUNNING) \(it stays on "
                        rf"the cluster\)\nhint: hpcbridge result {job_id} waits for it; hpcbridge cancel {job_id} "
                        r"stops it\n", err), err
    assert out == ""
    time.sleep(2)
    assert _squeue(cluster, job_id).split()[1] in ("PENDING", "RUNNING")  # Ctrl-C stopped the waiting only
    assert hb("cancel", job_id).stdout == f"{job_id}\n"
    assert cluster.wait_job(job_id, timeout=60).state == "CANCELLED"


# -- targets and scripts on the cluster ---------------------------------------------------------------------------
def test_a_python_file_runs_on_a_node_with_its_arguments_its_folder_and_its_exit_status(hb, cluster):
    (hb.dir / "helper.py").write_text("SCALE = 3\n")
    (hb.dir / "train.py").write_text(textwrap.dedent("""\
        import socket, sys
        import helper  # next to the script: its folder is on sys.path in the job
        print("train on", socket.gethostname(), "args", sys.argv[1:], "scale", helper.SCALE, flush=True)
        print("to stderr", file=sys.stderr)
        sys.exit(4)
    """))
    p = hb("submit", "--site", "testcluster", "--wait", "--timeout", "400", "train.py", "--", "--lr", "0.1", rc=4)
    assert re.fullmatch(r"train on node[123] args \['--lr', '0\.1'\] scale 3\n", p.stdout), p.stdout
    assert p.stderr == "to stderr\n"
    (record,) = json.loads(hb("status", "--json").stdout)
    assert record["state"] == "FAILED" and record["site"] == "testcluster"


def test_dry_run_and_render_print_the_slurm_script_and_submit_nothing(hb, cluster):
    (hb.dir / "train.py").write_text("print('hi')\n")
    before = _job_folders()
    script = hb("submit", "--site", "testcluster", "--dry-run", "-N", "2", "--launcher", "srun", "-J", "cli-dry",
                "-t", "00:07:00", "--", "hostname").stdout
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in ("#SBATCH --job-name=cli-dry", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --time=00:07:00", "#SBATCH --partition=debug", f"#SBATCH --chdir={hb.dir}"):
        assert line in lines, script
    (launch,) = [x for x in lines if x.startswith("exec ")]
    assert re.fullmatch(r"exec /opt/hpcbridge-test/venv/bin/python -m hpcbridge\.rendezvous (\S+) -- srun "
                        r"--mpi=pmix --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=1 --kill-on-bad-exit=1 "
                        r"/opt/hpcbridge-test/venv/bin/python -u -m hpcbridge\.worker \1", launch), launch
    rendered = hb("render", "--site", "testcluster", "-p", "short", "-t", "4", "train.py").stdout.splitlines()
    assert "#SBATCH --partition=short" in rendered and "#SBATCH --time=00:04:00" in rendered
    assert [x for x in rendered if re.fullmatch(r"# hpcbridge \S+: hpcbridge\.commands\.run_script, 1 call", x)]
    assert re.fullmatch(r"exec /opt/hpcbridge-test/venv/bin/python -u -m hpcbridge\.worker \S+", rendered[-1])
    p = hb("render", "--site", "testcluster", "-p", "short", "train.py", rc=2)  # the limits are checked as well
    assert p.stderr.splitlines()[0] == ("hpcbridge: error: walltime=00:10:00 exceeds partition 'short' (max "
                                        "00:05:00); partitions with 00:10:00: 'debug'")
    assert json.loads(hb("status", "--json").stdout) == []
    assert _job_folders() == before
    assert cluster.run(["squeue", "-h", "-n", "cli-dry"], timeout=30).stdout == ""


# -- sites check / discover ----------------------------------------------------------------------------------------
def test_sites_check_without_a_file_checks_every_known_site(hb, cluster):
    names = [line.split("\t")[0] for line in hb("sites", "list").stdout.splitlines()]
    assert {"local", "testcluster", "testcluster-ssh"} <= set(names)
    p = hb("sites", "check")
    rows = [line.split("\t") for line in p.stdout.splitlines()]
    assert [r[0] for r in rows] == ["ok"] * len(names) and [r[1] for r in rows] == names, p.stdout
    assert dict((r[1], r[2]) for r in rows)["testcluster"] == (
        "slurm, transport local, partitions debug, short, 1 layer(s)")
    assert p.stderr == ""
    bad = hb.xdg / "hpcbridge" / "sites" / "broken.toml"
    bad.write_text('scheduler = "slurm"\n[partitions.a]\nmax_node = 2\n')
    p = hb("sites", "check", rc=2)
    assert [line.split("\t")[1] for line in p.stdout.splitlines()] == [n for n in names]  # the others still ok
    assert p.stderr == (
        f"hpcbridge: error: {bad}:3: unknown key 'max_node' in [partitions.a] (did you mean 'max_nodes'?); valid "
        "keys: max_nodes, cpus_per_node, mem_gb_per_node, gpus_per_node, gpu_type, max_walltime, default, "
        "description, requeue\nhint: docs/site-configs.md lists every key and its type\n")


def test_discover_via_an_ssh_site_from_the_laptop_reads_the_cluster_over_ssh(hb, cluster):
    """On the laptop scontrol cannot reach the controller; --via runs it on the login node over SSH."""
    env = ["env", f"PYTHONPATH={REPO}", f"HPCBRIDGE_SITES_PATH={REPO / 'site-configs'}"]
    # the laptop's python is this one (the stage's venv, visible in the client namespace too)
    cli = [*env, sys.executable, "-m", "hpcbridge.cli", "sites", "discover"]
    p = cluster.client([*cli, "--via", "testcluster-ssh", "viassh"], timeout=180)
    assert p.returncode == 0, p.stderr
    via = p.stdout
    assert via.splitlines()[1].startswith("# from site 'testcluster-ssh' on ")
    local = hb("sites", "discover", "viassh").stdout  # the same commands run here, on the login side
    assert local.splitlines()[1].startswith("# from this machine on ")

    def body(text: str) -> list[str]:  # without the line saying where and when, and the python line
        return [x for i, x in enumerate(text.splitlines()) if i != 1 and not x.startswith("python = ")]

    assert body(via) == body(local)  # the same partitions, limits and settings, read through SSH
    assert 'python = "/opt/hpcbridge-test/venv/bin/python"' in via.splitlines()  # the via site's python
    (here,) = [x for x in local.splitlines() if x.startswith("python = ")]  # here: the python that ran discover
    assert re.fullmatch(r'python = "/opt/hpcbridge-test/venv/bin/python3?"', here), here
    target = hb.dir / "viassh.toml"
    target.write_text(via)
    assert hb("sites", "check", str(target)).stdout.startswith(f"ok\t{target}\tslurm, transport local, partitions "
                                                               "debug, short")
    p = cluster.client(cli, timeout=180)  # without --via: the laptop is no login node, and says so in one line
    lines = p.stderr.splitlines()
    assert p.returncode == 3 and len(lines) == 2, p.stderr
    assert lines[0].startswith("hpcbridge: error: could not read the cluster's configuration (is this a Slurm "
                               "login node?): "), p.stderr
    assert lines[1] == "hint: the command was: scontrol --oneliner show partition"
