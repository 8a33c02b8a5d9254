"""A tiny batch system for the built-in ``local`` site: same shape as sbatch/sacct/scancel.

    python -m hpcbridge.schedulers.local_runner submit SCRIPT        -> prints the job id (the folder's name)
    python -m hpcbridge.schedulers.local_runner status --root R IDS  -> 'id|STATE|exit' per task
    python -m hpcbridge.schedulers.local_runner cancel --root R IDS

The script's ``#LOCAL --array-size=N`` and ``#LOCAL --parallel=P`` lines say how many tasks to run and how many at
once (P defaults to the machine's CPUs). Each task runs ``bash SCRIPT`` with HPCBRIDGE_TASK set, stdout/stderr to
log/<task>.out/.err. Not an adapter (that is :mod:`hpcbridge.schedulers.local`): this is the batch system itself,
run on the cluster side, so it reads files and the clock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from hpcbridge._proc import kill_group
from hpcbridge.jobenv import TASK_VAR
from hpcbridge.store import JobFolder, write_atomic

#: the script's directive with the number of tasks (``ntasks`` in scripts of hpcbridge 0.1.0 and before)
_SIZE_KEYS = ("array-size", "ntasks")


def _directives(script: str) -> Dict[str, str]:
    """The ``#LOCAL --key=value`` lines of ``script``."""
    out: Dict[str, str] = {}
    with open(script) as fh:
        for line in fh:
            if line.startswith("#LOCAL --") and "=" in line:
                key, value = line[len("#LOCAL --") :].strip().split("=", 1)
                out[key] = value
    return out


def _array_size(directives: Dict[str, str]) -> int:
    return int(next((directives[k] for k in _SIZE_KEYS if k in directives), "1"))


def submit(script: str) -> int:
    folder = os.path.dirname(os.path.abspath(script))
    state = os.path.join(folder, "local")
    os.makedirs(state, mode=0o700, exist_ok=True)
    with open(os.path.join(state, "runner.log"), "ab") as log:
        # in this command's directory, not the job folder: ``-m`` then finds the hpcbridge this command runs (a
        # checkout's, before an installed one); the runner uses absolute paths and gives each task its own cwd
        proc = subprocess.Popen(  # noqa: S603 - argv list
            [sys.executable, "-m", "hpcbridge.schedulers.local_runner", "run", os.path.abspath(script)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    write_atomic(os.path.join(state, "runner.pid"), str(proc.pid).encode())
    print(os.path.basename(folder))
    return 0


def run(script: str) -> int:
    folder = os.path.dirname(os.path.abspath(script))
    d = _directives(script)
    size = _array_size(d)
    parallel = max(1, int(d.get("parallel", str(os.cpu_count() or 1))))
    workdir = d.get("chdir") or folder
    state = os.path.join(folder, "local")
    paths = JobFolder(folder)
    pending = list(range(size))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                task = pending.pop(0)
            if os.path.exists(os.path.join(state, f"cancelled.{task}")):
                continue  # cancelled before it started
            write_atomic(os.path.join(state, f"{task}.start"), b"")
            env = {**os.environ, TASK_VAR: str(task)}
            with open(paths.log(task, "out"), "ab") as out, open(paths.log(task, "err"), "ab") as err:
                # each task in its own process group, so that one task can be cancelled alone
                proc = subprocess.Popen(  # noqa: S603
                    ["bash", script], stdout=out, stderr=err, env=env, cwd=workdir, start_new_session=True  # noqa: S607
                )
                write_atomic(os.path.join(state, f"{task}.pid"), str(proc.pid).encode())
                code = proc.wait()
            write_atomic(os.path.join(state, f"{task}.exit"), str(code).encode())

    threads = [threading.Thread(target=worker) for _ in range(min(parallel, size))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


def _alive(pid: int, tag: str) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False  # exited, not yet reaped
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return tag.encode() in fh.read()
    except (OSError, IndexError):
        return True


def _runner_pid(state: str) -> Optional[int]:
    try:
        with open(os.path.join(state, "runner.pid")) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def status(root: str, ids: List[str]) -> int:
    for job_id in ids:
        folder = os.path.join(root, job_id)
        state = os.path.join(folder, "local")
        if not os.path.isdir(state):
            continue
        directives = _directives(JobFolder(folder).script)
        size = _array_size(directives)
        is_array = directives.get("array") == "1"
        pid = _runner_pid(state)
        alive = pid is not None and _alive(pid, job_id)
        all_cancelled = os.path.exists(os.path.join(state, "cancelled"))
        for task in range(size):
            task_id = f"{job_id}_{task}" if is_array else job_id
            cancelled = all_cancelled or os.path.exists(os.path.join(state, f"cancelled.{task}"))
            try:
                with open(os.path.join(state, f"{task}.exit")) as fh:
                    code = int(fh.read().strip())
                native, exit_code = ("COMPLETED" if code == 0 else "FAILED"), str(code)
                if code != 0 and cancelled:
                    native = "CANCELLED"
            except (OSError, ValueError):
                exit_code = ""
                if cancelled:
                    native = "CANCELLED"
                elif not alive:
                    native = "FAILED"
                elif os.path.exists(os.path.join(state, f"{task}.start")):
                    native = "RUNNING"
                else:
                    native = "PENDING"
            print(f"{task_id}|{native}|{exit_code}")
    return 0


def _stop_tasks(state: str, tasks: List[int]) -> None:
    """SIGTERM the process groups of these tasks, SIGKILL what is left after 3 s."""
    pids = []
    for task in tasks:
        with contextlib.suppress(OSError, ValueError), open(os.path.join(state, f"{task}.pid")) as fh:
            pids.append(int(fh.read().strip()))
    for pid in pids:
        kill_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p, "")]
        time.sleep(0.05)
    for pid in pids:
        kill_group(pid, signal.SIGKILL)


def cancel(root: str, ids: List[str]) -> int:
    """Cancel whole jobs (``ID``) or single tasks (``ID_TASK``); exit 1 if an id is unknown."""
    status = 0
    for job_id in ids:
        base, _, task_text = job_id.partition("_")
        state = os.path.join(root, base, "local")
        if not os.path.isdir(state):
            print(f"cancel: no such local job {job_id}", file=sys.stderr)
            status = 1
            continue
        size = _array_size(_directives(JobFolder(os.path.join(root, base)).script))
        if task_text:
            write_atomic(os.path.join(state, f"cancelled.{int(task_text)}"), b"")
            _stop_tasks(state, [int(task_text)])
            continue
        write_atomic(os.path.join(state, "cancelled"), b"")
        pid = _runner_pid(state)
        if pid is not None and _alive(pid, base):
            kill_group(pid, signal.SIGTERM)  # the runner starts no more tasks
        _stop_tasks(state, list(range(size)))
    return status


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd, rest = argv[0], argv[1:]
    if cmd == "submit":
        return submit(rest[0])
    if cmd == "run":
        return run(rest[0])
    if cmd in ("status", "cancel") and rest[:1] == ["--root"]:
        return (status if cmd == "status" else cancel)(rest[1], rest[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
