"""A tiny batch system for the built-in ``local`` site: same shape as sbatch/sacct/scancel.

    python -m hpcbridge.schedulers.local_runner submit SCRIPT        -> prints the job id (the folder's name)
    python -m hpcbridge.schedulers.local_runner status --root R IDS  -> 'id|STATE|exit|name' per task
    python -m hpcbridge.schedulers.local_runner cancel --root R IDS

The script's ``#LOCAL --key=value`` lines (written by :mod:`hpcbridge.schedulers.local`) say how many tasks to run
(``array-size``) and how many at once (``parallel``, default: as many as this machine's CPUs hold), and what each
task is given: ``cpus-per-task`` x ``tasks-per-node`` CPUs (an affinity mask), ``walltime-s`` (stopped as Slurm
stops a job: SIGTERM to its process group, SIGKILL :data:`KILL_WAIT_S` later; it ends TIMEOUT) and ``mem-mb`` (the
resident memory of its processes, sampled every :data:`MEM_SAMPLE_S`; over it the task is killed and ends
OUT_OF_MEMORY, as under Slurm's OverMemoryKill). Each task runs ``bash SCRIPT`` in its own process group with
HPCBRIDGE_TASK set, stdout/stderr to log/<task>.out/.err. Not an adapter (that is
:mod:`hpcbridge.schedulers.local`): this is the batch system itself, run on the cluster side, so it reads files,
the clock and /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Dict, List, Optional

from hpcbridge._proc import kill_group
from hpcbridge.jobenv import CPUS_PER_TASK_VAR, TASK_VAR
from hpcbridge.schedulers.local_limits import Cpus, group_alive, group_rss, machine_cpus
from hpcbridge.store import JobFolder, write_atomic

#: the script's directive with the number of tasks (``ntasks`` in scripts of hpcbridge 0.1.0 and before)
_SIZE_KEYS = ("array-size", "ntasks")
#: seconds between SIGTERM and SIGKILL when a task is stopped (cancel, walltime): Slurm's KillWait, shortened
KILL_WAIT_S = 3.0
#: seconds between two looks at a task's memory (``mem-mb``)
MEM_SAMPLE_S = 0.5
#: a task's end that the runner caused, by the marker file it leaves: the state ``status`` reports
_ENDS = {"timeout": "TIMEOUT", "oom": "OUT_OF_MEMORY"}


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


def _cpus_needed(directives: Dict[str, str]) -> int:
    """The CPUs one task is given: cpus_per_task x tasks_per_node (its ranks, when a launcher starts them)."""
    return int(directives.get("cpus-per-task", "1")) * int(directives.get("tasks-per-node", "1"))


def _refusal(directives: Dict[str, str]) -> str:
    """Why this machine cannot run the job as asked ('' when it can): checked at submission, nothing started."""
    need, have = _cpus_needed(directives), len(machine_cpus()) or os.cpu_count() or 1
    if need > have:
        return (
            f"this job asks for {need} CPUs per task (cpus_per_task={directives.get('cpus-per-task', '1')} x "
            f"tasks_per_node={directives.get('tasks-per-node', '1')}) and this machine has {have}: ask for at most "
            f"{have} for a run on the local site, or use a cluster site"
        )
    if "mem-mb" in directives and not os.path.isdir("/proc"):
        return ("mem_gb cannot be enforced on this machine (the local site reads the memory of a job's processes "
                "from /proc, which it has not): drop mem_gb for a run on the local site, or use a cluster site")
    return ""


def submit(script: str) -> int:
    folder = os.path.dirname(os.path.abspath(script))
    directives = _directives(script)
    problem = _refusal(directives)
    if problem:
        print(f"local runner: {problem}", file=sys.stderr)
        return 1
    state = os.path.join(folder, "local")
    os.makedirs(state, mode=0o700, exist_ok=True)
    with open(os.path.join(state, "runner.log"), "ab") as log:
        # in this command's directory, not the job folder: ``-m`` then finds the hpcbridge this command runs (a
        # checkout's, before an installed one); the runner uses absolute paths and gives each task its own cwd
        proc = subprocess.Popen(  # noqa: S603 - argv list
            # the job's name in the runner's command line: what ``ps`` lists for the job
            [sys.executable, "-m", "hpcbridge.schedulers.local_runner", "run",
             f"--job-name={directives.get('job-name', '')}", os.path.abspath(script)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    write_atomic(os.path.join(state, "runner.pid"), str(proc.pid).encode())
    print(os.path.basename(folder))
    return 0


def _hms(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _end_task(proc: subprocess.Popen[bytes], state: str, task: int, why: str, err: IO[bytes], line: str) -> int:
    """Stop a task the runner ends (``why``: a key of _ENDS): its marker first (status reports it from then on),
    then the line in its stderr, then SIGTERM to its process group and SIGKILL KILL_WAIT_S later (a memory kill:
    SIGKILL at once). The task's exit status."""
    write_atomic(os.path.join(state, f"{task}.{why}"), b"")
    err.write(f"hpcbridge local runner: *** {line} ***\n".encode())
    err.flush()
    grace = KILL_WAIT_S if why == "timeout" else 0.0
    if grace:
        kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        # until every process of the group has exited; the leader is not reaped meanwhile, so the group keeps its
        # id (no new process can take it) until the SIGKILL below
        while time.monotonic() < deadline and group_alive(proc.pid):
            time.sleep(0.05)
    kill_group(proc.pid, signal.SIGKILL)  # whatever is left of the group
    return proc.wait()


def _supervise(
    proc: subprocess.Popen[bytes], directives: Dict[str, str], state: str, task: int, label: str, err: IO[bytes]
) -> int:
    """Wait for a task, ending it at its walltime or over its memory; its exit status."""
    walltime = int(directives["walltime-s"]) if "walltime-s" in directives else None
    mem_mb = int(directives["mem-mb"]) if "mem-mb" in directives else None
    start = time.monotonic()
    while True:
        step: Optional[float] = None
        if walltime is not None:
            step = max(0.0, start + walltime - time.monotonic())
        if mem_mb is not None:
            step = MEM_SAMPLE_S if step is None else min(step, MEM_SAMPLE_S)
        try:
            return proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            pass
        if mem_mb is not None:
            used = group_rss(proc.pid)
            if used > mem_mb * 2**20:
                line = (f"job {label} killed: its processes used {used // 2**20} MB of memory, more than its "
                        f"mem_gb ({mem_mb} MB)")
                return _end_task(proc, state, task, "oom", err, line)
        if walltime is not None and time.monotonic() - start >= walltime:
            line = f"job {label} stopped: it reached its walltime of {_hms(walltime)}"
            return _end_task(proc, state, task, "timeout", err, line)


def run(script: str) -> int:
    folder = os.path.dirname(os.path.abspath(script))
    d = _directives(script)
    size = _array_size(d)
    cpus = Cpus()
    need = _cpus_needed(d)
    # by default as many at once as the machine's CPUs hold: one per CPU, fewer when a task takes several
    parallel = int(d.get("parallel", "0")) or max(1, (len(cpus.machine) or os.cpu_count() or 1) // need)
    workdir = d.get("chdir") or folder
    state = os.path.join(folder, "local")
    paths = JobFolder(folder)
    job_id = os.path.basename(folder)
    is_array = d.get("array") == "1"
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
            env = {**os.environ, TASK_VAR: str(task), CPUS_PER_TASK_VAR: d.get("cpus-per-task", "1")}
            mask, claims = cpus.take(need, task)
            try:
                if mask:  # this thread's affinity is what the task's processes inherit
                    with contextlib.suppress(OSError):  # a CPU gone offline meanwhile: the thread's mask stays
                        os.sched_setaffinity(0, mask)
                with open(paths.log(task, "out"), "ab") as out, open(paths.log(task, "err"), "ab") as err:
                    # each task in its own process group, so that one task can be cancelled alone
                    proc = subprocess.Popen(  # noqa: S603
                        ["bash", script], stdout=out, stderr=err, env=env, cwd=workdir, start_new_session=True  # noqa: S607
                    )
                    write_atomic(os.path.join(state, f"{task}.pid"), str(proc.pid).encode())
                    label = f"{job_id}_{task}" if is_array else job_id
                    code = _supervise(proc, d, state, task, label, err)
            finally:
                cpus.give_back(mask, claims)
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
        name = directives.get("job-name", "")
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
                ended = [_ENDS[why] for why in _ENDS if os.path.exists(os.path.join(state, f"{task}.{why}"))]
                if ended:  # stopped by the runner: at its walltime, or over its memory
                    native = ended[0]
                elif code != 0 and cancelled:
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
            print(f"{task_id}|{native}|{exit_code}|{name}")
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
    if cmd == "run":  # run [--job-name=NAME] SCRIPT
        return run(rest[-1])
    if cmd in ("status", "cancel") and rest[:1] == ["--root"]:
        return (status if cmd == "status" else cancel)(rest[1], rest[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
