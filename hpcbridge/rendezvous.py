"""The launch step of a multi-rank job: choose the master port, publish it, then become the launcher.

    python -m hpcbridge.rendezvous FOLDER [--port-range LO-HI] -- LAUNCHER ARGV...

Runs once per task in the batch script, on the allocation's first node (Slurm's batch host, PBS's mother
superior), which is where rank 0 and the torchrun rendezvous live. It

1. takes the master address from the expanded node list (its first node);
2. chooses a free port there by a real bind test, claimed against other jobs on the node
   (:func:`hpcbridge.ports.choose_port`);
3. writes both to ``FOLDER/rdv/TASK.json`` (atomically) and exports ``HPCBRIDGE_MASTER_ADDR`` and
   ``HPCBRIDGE_MASTER_PORT``, which srun, mpirun and torchrun pass on to every rank;
4. replaces ``{master_addr}``, ``{master_port}`` and ``{nodefile}`` (the allocation's node file) in the
   launcher's argv and execs it.

Standard library only (plus hpcbridge's in-job modules): it adds one interpreter start to the job.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import List, Optional, Tuple

from . import jobenv
from .errors import RendezvousError
from .ports import DEFAULT_PORT_RANGE, choose_port
from .store import write_atomic

USAGE = "usage: python -m hpcbridge.rendezvous FOLDER [--port-range LO-HI] -- LAUNCHER ARGV..."


def parse_args(argv: List[str]) -> Tuple[str, Tuple[int, int], List[str]]:
    if "--" not in argv:
        raise ValueError(USAGE)
    split = argv.index("--")
    head, command = argv[:split], argv[split + 1 :]
    if not head or not command:
        raise ValueError(USAGE)
    folder, options = head[0], head[1:]
    port_range = DEFAULT_PORT_RANGE
    while options:
        opt = options.pop(0)
        if opt == "--port-range" and options:
            lo, _, hi = options.pop(0).partition("-")
            if not (lo.isdigit() and hi.isdigit()):
                raise ValueError(f"--port-range wants LO-HI, got {lo}-{hi}")
            port_range = (int(lo), int(hi))
        else:
            raise ValueError(f"unknown option {opt!r}; {USAGE}")
    return folder, port_range, command


def substitute(command: List[str], addr: str, port: int, nodefile: str) -> List[str]:
    """The launcher argv with the rendezvous placeholders filled in (plain replacement, no other braces)."""
    out = []
    for arg in command:
        arg = arg.replace("{master_addr}", addr).replace("{master_port}", str(port))
        out.append(arg.replace("{nodefile}", nodefile))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        folder, port_range, command = parse_args(list(argv))
    except ValueError as exc:
        print(f"hpcbridge.rendezvous: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    hostname = socket.gethostname()
    env = jobenv.environment_from(os.environ, hostname)
    addr = env.nodes[0]
    if jobenv.node_index(list(env.nodes), hostname) != 0 or addr.split(".")[0] != hostname.split(".")[0]:
        print(
            f"hpcbridge.rendezvous: warning: the launch step runs on {hostname}, not on the first node {addr}; "
            "the master port was tested here",
            file=sys.stderr,
        )
    try:
        port = choose_port(port_range, job_id=env.job_id, claim_dir=os.environ.get(jobenv.CLAIM_DIR_VAR))
    except RendezvousError as exc:
        print(f"hpcbridge.rendezvous: {exc}", file=sys.stderr)
        return 1
    record = {
        "addr": addr,
        "port": port,
        "host": hostname,
        "job_id": env.job_id,
        "task": env.task,
        "nodes": list(env.nodes),
        "started": started,
        "published": time.time(),
    }
    path = jobenv.rendezvous_path(folder, env.task)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps(record).encode())
    except OSError as exc:  # the environment variables still carry it
        print(f"hpcbridge.rendezvous: warning: could not write {path}: {exc}", file=sys.stderr)
    os.environ[jobenv.MASTER_ADDR_VAR] = addr
    os.environ[jobenv.MASTER_PORT_VAR] = str(port)
    os.environ[jobenv.FOLDER_VAR] = folder
    final = substitute(command, addr, port, jobenv.node_file(os.environ))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(final[0], final)
    except OSError as exc:
        print(f"hpcbridge.rendezvous: cannot start {final[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
