"""The launch step (python -m hpcbridge.rendezvous): parse, choose and publish the port, exec the launcher."""

import json
import os
import socket
import subprocess
import sys

import pytest
from injob import F, free_port

from hpcbridge import rendezvous
from hpcbridge.errors import RendezvousError
from hpcbridge.ports import choose_port


def test_rendezvous_parses_and_substitutes():
    folder, ports, command = rendezvous.parse_args([F, "--port-range", "29400-29410", "--", "srun", "x"])
    assert (folder, ports, command) == (F, (29400, 29410), ["srun", "x"])
    assert rendezvous.substitute(["--rdzv-endpoint={master_addr}:{master_port}", "{nodefile}", "{x}"], "n1", 5,
                                 "/var/nf") == ["--rdzv-endpoint=n1:5", "/var/nf", "{x}"]
    for bad in ([F], [F, "--"], ["--", "srun"], [F, "--bogus", "--", "srun"]):
        with pytest.raises(ValueError):
            rendezvous.parse_args(bad)


def test_rendezvous_publishes_then_execs_the_launcher(tmp_path):
    """The real launch step in a fake one-node Slurm job: it writes rdv/3.json and the launcher sees the port."""
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": socket.gethostname(),
           "HPCBRIDGE_TASK": "3", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-m", "hpcbridge.rendezvous", str(tmp_path), "--port-range", "31000-31999", "--",
         "sh", "-c", 'echo "$1 $HPCBRIDGE_MASTER_ADDR $HPCBRIDGE_MASTER_PORT $HPCBRIDGE_FOLDER"', "sh",
         "{master_addr}:{master_port}"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    record = json.loads((tmp_path / "rdv" / "3.json").read_text())
    addr, port = record["addr"], record["port"]
    assert addr == socket.gethostname() and 31000 <= port <= 31999 and record["job_id"] == "9"
    assert out.stdout.split() == [f"{addr}:{port}", addr, str(port), str(tmp_path)]
    assert oct(os.stat(tmp_path / "rdv").st_mode & 0o777) == "0o700"


def test_the_launch_steps_claim_lasts_as_long_as_the_launcher_it_execs_into(tmp_path):
    port = free_port()
    claims = tmp_path / "claims"
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": socket.gethostname(),
           "PYTHONPATH": os.pathsep.join(sys.path), "HPCBRIDGE_PORT_CLAIM_DIR": str(claims)}
    launcher = "import os, sys; print(os.environ['HPCBRIDGE_MASTER_PORT'], flush=True); sys.stdin.read()"
    step = subprocess.Popen([sys.executable, "-m", "hpcbridge.rendezvous", str(tmp_path), "--port-range",
                             f"{port}-{port}", "--", sys.executable, "-c", launcher],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert step.stdout.readline().strip() == str(port)  # the launcher runs (same pid as the launch step)
        assert (claims / str(port)).read_text().split()[:3] == ["9", socket.gethostname(), str(step.pid)]
        with pytest.raises(RendezvousError, match=f"no free TCP port found in {port}-{port} "):
            choose_port((port, port), claim_dir=str(claims), job_id="next")
    finally:
        step.stdin.close()
        assert step.wait(timeout=60) == 0
    assert choose_port((port, port), claim_dir=str(claims), job_id="next") == port


def test_rendezvous_reports_a_launcher_that_is_not_there(tmp_path):
    env = {"PATH": "/nonexistent", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "hpcbridge.rendezvous", str(tmp_path), "--", "srun", "x"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 127 and "hpcbridge.rendezvous: cannot start 'srun'" in out.stderr


@pytest.mark.parametrize("scheduler", ["pbs", "torque over slurm"])
def test_the_launchers_nodefile_is_the_allocations(tmp_path, scheduler):
    """{nodefile} becomes PBS's node file, and also the one a PBS batch script writes for a Slurm job."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n" * 2)
    job = {"PBS_JOBID": "4242.pbs01"} if scheduler == "pbs" else {"SLURM_JOB_ID": "9",
                                                                    "SLURM_JOB_NODELIST": socket.gethostname()}
    env = dict(job, PATH=os.environ["PATH"], PBS_NODEFILE=str(nodefile), PYTHONPATH=os.pathsep.join(sys.path),
               HPCBRIDGE_PORT_CLAIM_DIR=str(tmp_path / "claims"))
    out = subprocess.run([sys.executable, "-m", "hpcbridge.rendezvous", str(tmp_path), "--", "echo", "{nodefile}"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == [str(nodefile)]
    assert json.loads((tmp_path / "rdv" / "0.json").read_text())["job_id"] == job.get("PBS_JOBID", "9")
