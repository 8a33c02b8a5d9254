"""The hpcbridge command through real subprocesses on the built-in local site: output, exit codes, error lines."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from hpcbridge.discover import parse_config, parse_gres, parse_records, partitions_from, render_site
from hpcbridge.sites import load_site_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run ``hpcbridge ARGS`` in a project folder with its own registry, user config and local job folder."""
    xdg = tmp_path / "xdg"
    (xdg / "hpcbridge" / "sites").mkdir(parents=True)
    (xdg / "hpcbridge" / "sites" / "local.toml").write_text(f'workdir = "{tmp_path}/jobs"\n')
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("HPCBRIDGE_SITES_PATH", str(tmp_path / "sites"))
    monkeypatch.delenv("HPCBRIDGE_SITE", raising=False)
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(*args, timeout=120, check_rc=None):
        p = subprocess.run([sys.executable, "-m", "hpcbridge.cli", *args], capture_output=True, text=True,
                           cwd=str(project), timeout=timeout)
        if check_rc is not None:
            assert p.returncode == check_rc, (p.returncode, p.stdout, p.stderr)
        return p

    run.project = project
    run.sites = tmp_path / "sites"
    return run


def test_a_command_after_dashes_runs_as_a_job_and_wait_relays_output_and_status(cli):
    p = cli("submit", "--wait", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check_rc=3)
    assert p.stdout == "out\n"
    assert p.stderr == "err\n"  # the worker's own traceback of the failed command is not shown


def test_a_function_by_module_and_name_returns_its_value(cli):
    (cli.project / "mymod.py").write_text("def add(a, b):\n    return int(a) + int(b)\n")
    p = cli("submit", "--wait", "mymod:add", "2", "3", check_rc=0)
    assert p.stdout == "5\n"
    p = cli("submit", "--wait", "--json", "mymod:add", "20", "3", check_rc=0)
    assert json.loads(p.stdout) == 23


def test_a_python_file_runs_with_its_arguments_and_its_exit_status(cli):
    (cli.project / "train.py").write_text(textwrap.dedent("""\
        import sys
        print("args", sys.argv[1:])
        sys.exit(4)
    """))
    p = cli("submit", "--wait", "train.py", "--", "--lr", "0.1", check_rc=4)
    assert p.stdout == "args ['--lr', '0.1']\n"


def test_submit_status_logs_result_when_piped_are_plain_and_parseable(cli):
    (cli.project / "mymod.py").write_text("def hello(name):\n    print('hi', name)\n    return name.upper()\n")
    p = cli("submit", "mymod:hello", "bob", check_rc=0)
    job_id = p.stdout.strip()
    assert p.stdout == job_id + "\n" and p.stderr == ""  # just the id: `JOB=$(hpcbridge submit ...)`
    assert cli("result", job_id, "--timeout", "60", check_rc=0).stdout == "'BOB'\n"
    assert cli("logs", job_id, check_rc=0).stdout == "hi bob\n"
    rows = [line.split("\t") for line in cli("status", check_rc=0).stdout.splitlines()]
    assert len(rows) == 1 and rows[0][:4] == [job_id, "local", "COMPLETED", "mymod.hello"]
    (record,) = json.loads(cli("status", "--json", check_rc=0).stdout)
    assert record["job_id"] == job_id and record["state"] == "COMPLETED" and record["function"] == "mymod.hello"


def test_cancel_stops_the_job_and_status_shows_it(cli):
    job_id = cli("submit", "--", "sleep", "120", check_rc=0).stdout.strip()
    time.sleep(1)
    assert cli("cancel", job_id, check_rc=0).stdout == job_id + "\n"
    (record,) = json.loads(cli("status", "--json", check_rc=0).stdout)
    assert record["state"] == "CANCELLED"
    p = cli("result", job_id, "--timeout", "30", check_rc=1)
    assert p.stderr.startswith(f"hpcbridge: error: job {job_id} was cancelled")
    assert cli("cancel", "--all", check_rc=0).stdout == ""  # nothing left to cancel


def test_dry_run_and_render_print_the_script_and_submit_nothing(cli):
    p = cli("submit", "--dry-run", "-J", "hello", "--", "echo", "hi", check_rc=0)
    assert p.stdout.startswith("#!/bin/bash\n") and "hpcbridge.commands.run_command" in p.stdout
    assert cli("render", "--", "echo", "hi", check_rc=0).stdout.startswith("#!/bin/bash\n")
    assert json.loads(cli("status", "--json", check_rc=0).stdout) == []


@pytest.mark.parametrize(
    "args, rc, first, hint",
    [
        (["submit", "--site", "nowhere", "--", "true"], 2, "hpcbridge: error: unknown site 'nowhere'",
         "hint: `hpcbridge sites list` shows the sites this machine knows"),
        (["submit", "--site", "hpc", "-G", "8", "--", "true"], 2,
         "hpcbridge: error: gpus_per_node=8 exceeds partition 'gpu' (max 4); partitions with 8: 'gpu-large'",
         "hint: `hpcbridge sites show hpc` lists the partitions and their limits"),
        (["submit", "--site", "hpc", "-t", "soon", "--", "true"], 2,
         "hpcbridge: error: walltime='soon' is not a duration; give minutes (90), 'MM:SS', 'HH:MM:SS', 'D-HH', "
         "'D-HH:MM' or 'D-HH:MM:SS'", "hint: `hpcbridge sites show hpc` lists the partitions and their limits"),
        (["submit"], 2, "hpcbridge: error: nothing to run: give a Python file, module:function, or a command after --",
         "hint: e.g. hpcbridge submit train.py, hpcbridge submit mypkg.jobs:main, hpcbridge submit -- hostname"),
        (["submit", "hostname"], 2, "hpcbridge: error: 'hostname' is not a Python file or module:function",
         "hint: to run a command, put it after --: hpcbridge submit -- hostname"),
        (["submit", "nomod:f"], 2, "hpcbridge: error: cannot import 'nomod': No module named 'nomod'",
         "hint: run from the folder that holds it, or install it"),
        (["logs", "4242"], 4, "hpcbridge: error: no job 4242 in this machine's registry",
         "hint: `hpcbridge status` lists the jobs submitted from here"),
        (["cancel"], 2, "hpcbridge: error: give job ids or --all (not both)",
         "hint: hpcbridge cancel 123 456, or hpcbridge cancel --all"),
        (["sites", "show", "hcp"], 2, "hpcbridge: error: unknown site 'hcp' (did you mean 'hpc'?)",
         "hint: `hpcbridge sites list` shows the sites this machine knows"),
    ],
)
def test_user_errors_are_one_line_and_a_hint_with_a_meaningful_exit_code(cli, args, rc, first, hint):
    cli.sites.mkdir(exist_ok=True)
    (cli.sites / "hpc.toml").write_text(textwrap.dedent("""\
        scheduler = "slurm"
        [partitions.gpu]
        default = true
        gpus_per_node = 4
        [partitions.gpu-large]
        gpus_per_node = 8
    """))
    p = cli(*args, check_rc=rc)
    lines = p.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(first) and lines[1] == hint, p.stderr
    assert "Traceback" not in p.stderr
    assert json.loads(cli("status", "--json").stdout) == []  # nothing was submitted


def test_result_and_cancel_of_an_unknown_job_exit_4(cli):
    for args in (["result", "4242"], ["cancel", "4242"], ["logs", "4242", "--site", "local"]):
        p = cli(*args, check_rc=4)
        where = " of site 'local'" if "--site" in args else ""
        assert p.stderr.splitlines() == [f"hpcbridge: error: no job 4242{where} in this machine's registry",
                                         "hint: `hpcbridge status` lists the jobs submitted from here"]


def test_the_resource_flags_are_the_executors_resource_names():
    from hpcbridge.cli import build_parser
    from hpcbridge.spec import RESOURCE_NAMES

    args = vars(build_parser().parse_args(["submit", "x.py"]))
    other = {"command", "debug", "func", "target", "args", "site", "dry_run", "wait", "timeout", "json"}
    assert set(args) - other == set(RESOURCE_NAMES) - {"array_parallelism"}


def test_a_bad_flag_is_a_usage_error():
    p = subprocess.run([sys.executable, "-m", "hpcbridge.cli", "submit", "--nodes", "two", "--", "true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "argument -N/--nodes: invalid int value: 'two'" in p.stderr


def test_sites_check_names_file_and_line_and_exits_2(cli, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('scheduler = "slurm"\n[partitions.a]\nmax_nodes = 2\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('scheduler = "slurm"\n\n[partitions.a]\nmax_node = 2\n')
    p = cli("sites", "check", str(good), str(bad), check_rc=2)
    assert p.stdout == f"ok\t{good}\tslurm, transport local, partitions a, 1 layer(s)\n"
    assert p.stderr.splitlines()[0] == (
        f"hpcbridge: error: {bad}:4: unknown key 'max_node' in [partitions.a] (did you mean 'max_nodes'?); "
        "valid keys: max_nodes, cpus_per_node, mem_gb_per_node, gpus_per_node, gpu_type, max_walltime, default, "
        "description, requeue"
    )
    assert cli("sites", "check", str(good), check_rc=0).stderr == ""
    for name in os.listdir(os.path.join(REPO, "site-configs")):
        cli("sites", "check", os.path.join(REPO, "site-configs", name), check_rc=0)


def test_sites_show_origin_says_which_file_and_line_set_each_value(cli):
    cli.sites.mkdir(exist_ok=True)
    system = cli.sites / "hpc.toml"
    system.write_text('scheduler = "slurm"\npython = "/sys/python"\n[defaults]\nwalltime = 30\n')
    user = cli.project.parent / "xdg" / "hpcbridge" / "sites" / "hpc.toml"
    user.write_text('python = "/my/python"\n')
    (cli.project / "hpcbridge.toml").write_text('[sites.hpc.defaults]\naccount = "proj"\n')
    lines = cli("sites", "show", "hpc", "--origin", check_rc=0).stdout.splitlines()

    def line(prefix):
        (found,) = [x for x in lines if x.startswith(prefix)]
        return " ".join(found.split())

    assert line("python =") == f'python = "/my/python" # {user}:1'
    assert line("scheduler =") == f'scheduler = "slurm" # {system}:1'
    assert line("walltime =") == f"walltime = 30 # {system}:4"
    assert line("account =") == f'account = "proj" # {cli.project}/hpcbridge.toml:2'
    assert line("accounting =") == "accounting = true # built-in default"
    shown = json.loads(cli("sites", "show", "hpc", "--json", check_rc=0).stdout)
    assert shown["values"]["python"] == {"value": "/my/python", "origin": f"{user}:1"}


def test_on_a_terminal_status_is_a_table_with_a_header(cli, on_pty):
    (cli.project / "m.py").write_text("def f():\n    return 1\n")
    job_id = cli("submit", "m:f", check_rc=0).stdout.strip()
    cli("result", job_id, "--timeout", "60", check_rc=0)
    p, plain = on_pty([sys.executable, "-m", "hpcbridge.cli", "status"], which="stdout", stderr=subprocess.PIPE,
                      cwd=str(cli.project), timeout=60, env={**os.environ, "COLUMNS": "150"})
    assert p.returncode == 0
    assert "JOB" in plain and "STATE" in plain and "FUNCTION" in plain and job_id in plain and "ago" in plain


def test_wait_on_a_terminal_shows_a_live_status_line_and_piped_shows_none(cli, on_pty):
    """stderr on a pty: the submitted line and a status line updated while the job runs; stdout stays clean."""
    p, screen = on_pty([sys.executable, "-m", "hpcbridge.cli", "submit", "--wait", "--", "sh", "-c",
                        "sleep 4; echo done"], which="stderr", stdout=subprocess.PIPE, text=True,
                       cwd=str(cli.project), timeout=120, env={**os.environ, "COLUMNS": "150"})
    assert p.returncode == 0 and p.stdout == "done\n"
    (job_id,) = re.findall(r"submitted job (\S+) to site 'local'", screen)
    # the status line: state, elapsed, redrawn as time passes (the first status query is ~2 s in), then where
    # it ran (the local scheduler names no node while a job runs)
    shown = re.findall(rf"job {re.escape(job_id)} RUNNING (\d+\.\d)s", screen)
    assert len(set(shown)) >= 2 and max(float(t) for t in shown) >= 3.0, screen
    host = re.escape(socket.gethostname())
    (final,) = re.findall(rf"job {re.escape(job_id)} COMPLETED on {host} (\d+\.\d)s", screen)
    assert float(final) >= 4.0, screen
    assert "done" not in screen  # the job's output went to stdout, after the status line was cleared
    piped = cli("submit", "--wait", "--", "sh", "-c", "sleep 1; echo done", check_rc=0)
    assert (piped.stdout, piped.stderr) == ("done\n", "")  # not a terminal: no status line, no message


# -- discover: parsers on recorded scontrol output ---------------------------------------------------------------
PARTITIONS = (
    "PartitionName=cpu AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=2-00:00:00 MinNodes=0 "
    "MaxCPUsPerNode=UNLIMITED Nodes=c[01-02] State=UP TotalCPUs=256 TotalNodes=2 MaxMemPerNode=UNLIMITED\n"
    "PartitionName=gpu AllowGroups=ALL Default=NO MaxNodes=4 MaxTime=12:00:00 MinNodes=0 MaxCPUsPerNode=UNLIMITED "
    "Nodes=g[01-02] State=UP TotalCPUs=128 TotalNodes=2 MaxMemPerNode=UNLIMITED\n"
)
NODES = (
    "NodeName=c01 Arch=x86_64 CPUTot=128 Gres=(null) OS=Linux 5.14 #1 SMP RealMemory=515000 Partitions=cpu\n"
    "NodeName=c02 Arch=x86_64 CPUTot=128 Gres=(null) OS=Linux 5.14 #1 SMP RealMemory=515000 Partitions=cpu\n"
    "NodeName=g01 Arch=x86_64 CPUTot=64 Gres=gpu:a100:4(S:0-1) RealMemory=480000 Partitions=gpu\n"
    "NodeName=g02 Arch=x86_64 CPUTot=64 Gres=gpu:a100:8(S:0-1),shard:16 RealMemory=980000 Partitions=gpu\n"
)
CONFIG = (
    "AccountingStorageType   = accounting_storage/slurmdbd\nClusterName             = bigiron\n"
    "GresTypes               = gpu,shard\nMaxArraySize            = 5001\nMpiDefault              = pmix\n"
    "SLURM_VERSION           = 23.02.7\n"
)


def test_discover_parsers_read_partitions_nodes_gres_and_config():
    nodes = parse_records(NODES)
    assert nodes[0]["OS"] == "Linux 5.14 #1 SMP" and nodes[0]["RealMemory"] == "515000"
    assert parse_gres("gpu:a100:4(S:0-1),gpu:v100:2") == {"count": 6, "types": ["a100", "v100"]}
    assert parse_gres("gpu:2") == {"count": 2, "types": []}
    assert parse_gres("(null)") == {"count": 0, "types": []}
    found = {p.name: p for p in partitions_from(parse_records(PARTITIONS), nodes)}
    cpu, gpu = found["cpu"], found["gpu"]
    assert (cpu.default, cpu.max_nodes, cpu.cpus_per_node, cpu.gpus_per_node, cpu.max_walltime) == (
        True, 2, 128, 0, "2-00:00:00")
    assert cpu.mem_gb_per_node == 502.93
    assert (gpu.default, gpu.max_nodes, gpu.gpus_per_node, gpu.gpu_type, gpu.max_walltime, gpu.heterogeneous) == (
        False, 2, 8, "a100", "12:00:00", True)
    assert parse_config(CONFIG)["MaxArraySize"] == "5001"


def test_discover_writes_a_site_config_that_validates(tmp_path):
    nodes = parse_records(NODES)
    text = render_site("bigiron", partitions_from(parse_records(PARTITIONS), nodes), parse_config(CONFIG),
                       "/opt/py/bin/python", "a test")
    path = tmp_path / "bigiron.toml"
    path.write_text(text)
    site = load_site_file(str(path))
    assert site.max_array_size == 5001 and site.accounting is True and site.slurm["mpi"] == "pmix"
    assert site.slurm["gpu_directive"] == "gres"
    assert site.partitions["gpu"].gpus_per_node == 8 and site.default_partition() == "cpu"
    assert "# 2 nodes, state UP, nodes differ: the limits below are the largest node's" in text
