"""hpcbridge from a notebook server that is itself a Slurm job, started by a real JupyterHub (batchspawner).

The hub is the test cluster's (tests/cluster/hub up; docs/jupyterhub.md): it runs on the login side and submits
alice's server with batchspawner.SlurmSpawner as her Slurm job on a compute node. The test acts as alice would,
with nothing but HTTP: the hub's REST API (with a token for alice that the test service issues), and through the
proxy the server's REST API and a kernel's websocket, on which it runs notebook cells and reads their outputs as
a front-end would (streams, results, HTML displays and their in-place updates).

Every server, kernel and job the test starts is stopped or cancelled at the end, also when it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

if TYPE_CHECKING:
    from conftest import LiveCluster  # tests/live/conftest.py

HUB_FILE = Path.home() / ".hpcbridge-test-hub.json"
HUB_HINT = "start it as root with: tests/cluster/hub up   (see docs/jupyterhub.md)"
SPAWNER_JOB_NAME = "spawner-jupyterhub"  # batchspawner's SlurmSpawner names its jobs so
KERNEL = "hpcbridge"  # the kernelspec tests/cluster/hub registers: the site's Python with hpcbridge
NODES = ("node1", "node2", "node3")
#: allocation variables that a job started inside another job must not inherit (the notebook's own)
#: the hub's API token of the user's server, which a child job must not carry (JPY_API_TOKEN: its old name)
HUB_TOKENS = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")
ALLOCATION_VARS = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_MEM_PER_NODE", "SLURM_CPU_BIND", "SLURM_CPU_BIND_TYPE",
                   "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NODELIST", "SLURM_SRUN_COMM_HOST",
                   "SLURM_SRUN_COMM_PORT", "SLURM_CPUS_PER_TASK", "SLURM_NTASKS")
SCHEDULER_PREFIXES = ("SLURM_", "SRUN_", "SALLOC_", "PMI_", "PMIX_")


# -- the hub's REST API ------------------------------------------------------------------------------------------
@dataclass
class Http:
    url: str
    token: str

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """(status, decoded JSON or None) of ``METHOD url+path``; never raises on an HTTP error status."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - our own hub, http://127.0.0.1
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return status, text

    def ok(self, method: str, path: str, body: Any = None, want: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        status, out = self.call(method, path, body)
        assert status in want, f"{method} {path} answered {status}: {out}"
        return out


@pytest.fixture(scope="module")
def hub(cluster: LiveCluster) -> Iterator[Http]:
    """alice's side of the hub: its URL and a token of alice's own (issued by the test service, as an admin
    would), removed at the end."""
    if not HUB_FILE.is_file():
        msg = f"the test cluster's JupyterHub is not set up ({HUB_FILE} is missing); {HUB_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    conf = json.loads(HUB_FILE.read_text())
    service = Http(conf["url"], conf["token"])
    try:
        service.call("GET", "/hub/api/", timeout=5)
    except OSError as e:
        msg = f"the test cluster's JupyterHub does not answer at {conf['url']}: {e}; {HUB_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    assert cluster.user == "alice", "the hub's test token issues tokens for alice: run the live tests as alice"
    tok = service.ok("POST", "/hub/api/users/alice/tokens", {"note": "hpcbridge live test", "expires_in": 1800})
    yield Http(conf["url"], tok["token"])
    service.call("DELETE", f"/hub/api/users/alice/tokens/{tok['id']}")


# -- alice's server: a Slurm job ---------------------------------------------------------------------------------
@dataclass
class Server:
    job_id: str
    node: str
    #: what squeue showed for the server's job at each poll of the hub while it was starting
    seen: list[str] = field(default_factory=list)


def spawner_jobs(cluster: LiveCluster) -> dict[str, str]:
    """alice's notebook-server jobs in the queue: {job id: "STATE NODE PARTITION"}."""
    out = cluster.run(["squeue", "--me", "-h", "-n", SPAWNER_JOB_NAME, "-o", "%i %T %N %P"], timeout=30).stdout
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1].strip() for line in out.splitlines() if line.strip()}


def spawner_accounting(cluster: LiveCluster, job_id: str, timeout: float = 60) -> str:
    """The state sacct shows for the notebook-server job ``job_id`` once it ended (job ids repeat after a reset of
    the cluster's state: the record is the one with batchspawner's job name)."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.run(["sacct", "-n", "-X", "-P", "-S", cluster.since, "-j", job_id, "--name", SPAWNER_JOB_NAME,
                           "-o", "State"], timeout=30).stdout.splitlines()
        if out and not out[-1].startswith(("PENDING", "RUNNING", "REQUEUED")):
            return out[-1]
        assert time.monotonic() < deadline, f"sacct shows the server's job {job_id} as {out} after {timeout} s"
        time.sleep(1)


def server_model(hub: Http) -> dict[str, Any] | None:
    return hub.ok("GET", "/hub/api/users/alice")["servers"].get("")  # type: ignore[no-any-return]


def stop_server(hub: Http, cluster: LiveCluster, job_id: str | None, timeout: float = 90) -> None:
    """Stop alice's server through the hub; cancel its job if the hub did not (this test's own job)."""
    hub.call("DELETE", "/hub/api/users/alice/server")
    deadline = time.monotonic() + timeout
    while server_model(hub) is not None and time.monotonic() < deadline:
        time.sleep(1)
    if job_id and job_id in spawner_jobs(cluster):
        cluster.run(["scancel", job_id], check=False, timeout=30)


def start_server(hub: Http, cluster: LiveCluster, timeout: float = 240) -> Server:
    """Start alice's server through the hub's REST API; wait until the hub says it is ready, while following its
    job in squeue."""
    if server_model(hub) is not None:  # left by an interrupted run
        stop_server(hub, cluster, None)
    before = set(spawner_jobs(cluster))
    status, out = hub.call("POST", "/hub/api/users/alice/server")
    assert status in (201, 202), f"POST /hub/api/users/alice/server answered {status}: {out}"
    seen: list[str] = []
    job_id = ""
    deadline = time.monotonic() + timeout
    try:
        while True:
            model = server_model(hub)
            new = {j: s for j, s in spawner_jobs(cluster).items() if j not in before}
            if new:
                assert len(new) == 1, f"more than one new notebook-server job: {new}"
                job_id, state = next(iter(new.items()))
                seen.append(state)
            if model and model.get("ready"):
                break
            assert model is not None, f"the hub forgot alice's server while it started; squeue: {new}"
            assert time.monotonic() < deadline, f"alice's server not ready after {timeout} s: {model}; squeue: {new}"
            time.sleep(1)
        # ready: its job is running on a compute node now
        state = spawner_jobs(cluster).get(job_id, "")
        seen.append(state)
        assert job_id, "the hub says the server is ready, but squeue never showed its job"
        m = re.fullmatch(r"RUNNING (node\d) debug", state)
        assert m, f"the ready server's job {job_id} shows {state!r} in squeue, expected RUNNING on a compute node"
        return Server(job_id, m.group(1), seen)
    except BaseException:
        stop_server(hub, cluster, job_id)
        raise


@pytest.fixture(scope="module")
def server(hub: Http, cluster: LiveCluster, request: pytest.FixtureRequest) -> Iterator[Server]:
    """alice's server, started through the hub; stopped at the end, and its jobs' logs in her home (batchspawner's
    ~/jupyterhub_slurmspawner_JOBID.log) removed when every test passed."""
    before = set(Path.home().glob("jupyterhub_slurmspawner_*.log"))
    srv = start_server(hub, cluster)
    yield srv
    stop_server(hub, cluster, srv.job_id)
    if request.session.testsfailed == 0:
        for log in set(Path.home().glob("jupyterhub_slurmspawner_*.log")) - before:
            log.unlink()


# -- a kernel over the websocket, through the proxy --------------------------------------------------------------
@dataclass
class Reply:
    status: str
    outputs: list[dict[str, Any]]
    error: str = ""

    @property
    def text(self) -> str:
        """Everything the cell printed (stdout and stderr) and its result's text/plain."""
        parts = [o["text"] for o in self.outputs if o["msg_type"] == "stream"]
        parts += [o["data"].get("text/plain", "") for o in self.outputs if o["msg_type"] == "execute_result"]
        return "".join(parts)

    def html(self, msg_type: str) -> list[str]:
        return [o["data"]["text/html"] for o in self.outputs if o["msg_type"] == msg_type and "text/html" in o["data"]]


class Kernel:
    """A kernel of alice's server, driven over ``/user/alice/api/kernels/ID/channels`` as JupyterLab does."""

    def __init__(self, hub: Http, workdir: Path) -> None:
        self.hub = hub
        self.workdir = workdir
        self.id = hub.ok("POST", "/user/alice/api/kernels", {"name": KERNEL})["id"]
        self.session = uuid.uuid4().hex
        self.loop = asyncio.new_event_loop()
        ws_url = re.sub(r"^http", "ws", hub.url) + f"/user/alice/api/kernels/{self.id}/channels"
        req = HTTPRequest(ws_url, headers={"Authorization": f"token {hub.token}"}, connect_timeout=30)
        self.ws: WebSocketClientConnection = self._do(lambda: websocket_connect(req))
        self.replies: dict[str, Reply] = {}
        self._pending: dict[str, Reply] = {}
        self._idle: set[str] = set()

    def _do(self, make: Callable[[], Any], timeout: float | None = None) -> Any:
        """Await what ``make()`` returns on this kernel's own event loop, made inside it (tornado's futures belong
        to the loop that runs when they are made)."""
        async def inside() -> Any:
            return await asyncio.wait_for(make(), timeout)

        return self.loop.run_until_complete(inside())

    def send(self, code: str) -> str:
        """Send an execute_request; returns its msg_id (the reply is collected by :meth:`wait`)."""
        msg_id = uuid.uuid4().hex
        msg = {"header": {"msg_id": msg_id, "username": "alice", "session": self.session, "msg_type": "execute_request",
                          "version": "5.3", "date": ""},
               "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
               "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                           "allow_stdin": False, "stop_on_error": True}}
        self._pending[msg_id] = Reply("", [])
        self._do(lambda: self.ws.write_message(json.dumps(msg)))
        return msg_id

    def wait(self, msg_id: str, timeout: float = 300) -> Reply:
        """Read messages until ``msg_id``'s execute_reply and its idle status arrived."""
        deadline = time.monotonic() + timeout
        while msg_id not in self.replies:
            left = deadline - time.monotonic()
            assert left > 0, f"no reply to the cell within {timeout} s; outputs so far: {self._pending[msg_id]}"
            try:
                raw = self._do(self.ws.read_message, timeout=left)
            except asyncio.TimeoutError:
                continue
            assert raw is not None, "the kernel's websocket closed"
            self._take(json.loads(raw))
        return self.replies[msg_id]

    def _take(self, msg: dict[str, Any]) -> None:
        parent = msg.get("parent_header", {}).get("msg_id")
        reply = self._pending.get(parent or "")
        if reply is None:
            return
        kind, content = msg["header"]["msg_type"], msg["content"]
        if msg["channel"] == "iopub":
            if kind == "status" and content["execution_state"] == "idle":
                self._idle.add(parent)
            elif kind in ("stream", "execute_result", "display_data", "update_display_data", "error"):
                reply.outputs.append({"msg_type": kind, **content})
        elif msg["channel"] == "shell" and kind == "execute_reply":
            reply.status = content["status"]
            if content["status"] == "error":
                reply.error = "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", line) for line in content.get("traceback", []))
        if reply.status and parent in self._idle:
            self.replies[parent] = self._pending.pop(parent)

    def run(self, code: str, timeout: float = 300) -> Reply:
        """Run one cell; fail the test with the cell's traceback if it raised."""
        reply = self.wait(self.send(textwrap.dedent(code)), timeout)
        assert reply.status == "ok", f"the cell failed:\n{code}\n{reply.error}"
        return reply

    def close(self) -> None:
        self.ws.close()
        self.hub.call("DELETE", f"/user/alice/api/kernels/{self.id}")
        self.loop.close()


def open_kernel(hub: Http, workdir: Path) -> Kernel:
    """A kernel with hpcbridge's executor ``ex`` on the server's default site (``Executor()`` without ``site=``:
    the HPCBRIDGE_SITE the hub gives every server), its job folders in ``workdir``."""
    kernel = Kernel(hub, workdir)
    # the jobs run this checkout's hpcbridge, like every live test (tests/run: the stage, installed in the kernel's
    # venv anyway; a developer's worktree: PYTHONPATH)
    repo = os.environ.get("PYTHONPATH", "")
    kernel.run(f"""
        import os, sys, time, asyncio, json, socket, subprocess
        if {repo!r}:
            sys.path.insert(0, {repo!r})
            os.environ["PYTHONPATH"] = {repo!r}
        from hpcbridge import Executor
        ex = Executor(folder={str(workdir / "jobs")!r}, walltime=5, mem_gb=0.25)
        print(ex.site.name, socket.gethostname(), os.environ["SLURM_JOB_ID"])
    """)
    return kernel


@pytest.fixture(scope="module")
def kernel(server: Server, hub: Http, _cluster_session_dir: Path) -> Iterator[Kernel]:
    workdir = _cluster_session_dir / "jupyterhub"
    workdir.mkdir(exist_ok=True)
    k = open_kernel(hub, workdir)
    yield k
    k.close()


@pytest.fixture(scope="module")
def submitted(cluster: LiveCluster) -> Iterator[list[str]]:
    """Ids of the jobs the notebook submitted; the ones still in the queue are cancelled at the end."""
    ids: list[str] = []
    yield ids
    left = set(ids) & {i.split("_")[0] for i in cluster.squeue_ids()}
    if left:
        cluster.run(["scancel", *sorted(left)], check=False, timeout=30)


# -- the tests ---------------------------------------------------------------------------------------------------
def test_the_hub_starts_alices_server_as_her_slurm_job_on_a_compute_node(server: Server, hub: Http,
                                                                         cluster: LiveCluster) -> None:
    assert server.node in NODES
    assert f"RUNNING {server.node} debug" in server.seen
    # the server answers through the proxy, to alice's token
    assert "version" in hub.ok("GET", "/user/alice/api/status") or hub.ok("GET", "/user/alice/api")["version"]
    status, _ = Http(hub.url, "not-a-token").call("GET", "/user/alice/api/kernels")
    assert status in (302, 401, 403), f"the server answered {status} to a bad token"


def test_a_notebook_cell_submits_to_the_cluster_and_shows_the_job_and_progress(kernel: Kernel, server: Server,
                                                                               submitted: list[str]) -> None:
    r = kernel.run("""
        print(os.environ["HPCBRIDGE_SITE"], ex.site.name, os.environ["SLURM_JOB_ID"], socket.gethostname())
    """)
    assert r.text.split() == ["testcluster", "testcluster", server.job_id, server.node]

    r = kernel.run("""
        def square(x):
            import socket
            return x * x, socket.gethostname()

        job = ex.submit(square, 7)
        value, host = job.result(timeout=240)
        print(job.job_id, value, host)
    """)
    job_id, value, host = r.text.split()
    submitted.append(job_id)
    assert value == "49" and host in NODES and job_id != server.job_id

    table = kernel.run("job").html("execute_result")
    assert len(table) == 1 and job_id in table[0] and "COMPLETED" in table[0], table

    r = kernel.run("""
        jobs = ex.map_jobs(square, range(3))
        print([j.job_id for j in jobs])
        [v for v, _ in ex.map(square, range(4), timeout=240)]
    """)
    submitted.extend(re.findall(r"'(\d+)", r.text))
    assert r.text.rstrip().endswith("[0, 1, 4, 9]"), r.text
    progress = r.html("display_data") + r.html("update_display_data")
    assert progress and all('class="hpcbridge-progress"' in p for p in progress), r.outputs
    assert "4/4 done" in progress[-1], progress[-1]

    group = kernel.run("[j.result(timeout=240)[0] for j in jobs]\njobs").html("execute_result")
    assert len(group) == 1, group
    rows = re.findall(r"<tr>(.*?)</tr>", group[0].split("<tbody>", 1)[1])
    assert len(rows) == 3 and all("COMPLETED" in row for row in rows), group


def test_child_jobs_do_not_inherit_the_notebook_jobs_allocation(kernel: Kernel, server: Server, ex: Any,
                                                                 cluster: LiveCluster, submitted: list[str]) -> None:
    def environment() -> dict[str, str]:
        return dict(os.environ)

    # the same job submitted from the login side, outside any allocation: the scheduler variables a job has
    clean = ex.with_resources(mem_gb=0.3).submit(environment)
    # from the notebook: a child asking for other memory than the notebook's job (1G); a child asking for memory per
    # CPU, whose srun dies ("mutually exclusive") if it sees the notebook's SLURM_MEM_PER_NODE next to its own
    # SLURM_MEM_PER_CPU; and, as the control, that same request submitted with the notebook's environment as it is
    r = kernel.run(f"""
        nb_env = {{k: v for k, v in os.environ.items() if k.startswith({SCHEDULER_PREFIXES!r})}}
        nb_tokens = sorted(k for k in {HUB_TOKENS!r} if os.environ.get(k))

        def environment():
            return dict(os.environ)

        def world_size():
            import hpcbridge
            return hpcbridge.environment().world_size

        child = ex.with_resources(mem_gb=0.3).submit(environment)
        per_cpu = ex.with_resources(mem_gb=None, extra_directives=["--mem-per-cpu=300M"], launcher="srun",
                                    tasks_per_node=2).submit(world_size)
        control = subprocess.run(
            ["sbatch", "--parsable", "-t", "2", "--mem-per-cpu=300M", "--ntasks=2",
             "-o", {str(kernel.workdir / "control-%j.out")!r}, "--wrap", "srun hostname"],
            capture_output=True, text=True, check=True).stdout.strip()
        print(json.dumps({{"child": child.job_id, "per_cpu": per_cpu.job_id, "control": control}}))
    """)
    ids = json.loads(r.text)
    submitted.extend(ids.values())
    r = kernel.run("""
        child_env = child.result(timeout=240)
        print(json.dumps({"nb": nb_env, "child": child_env, "world_size": per_cpu.result(timeout=240),
                          "nb_tokens": nb_tokens}))
    """)
    out = json.loads(r.text)
    nb_env, child_env = out["nb"], out["child"]
    clean_env = clean.result(timeout=240)
    print("the notebook's scheduler variables:", sorted(nb_env))

    # the notebook does run inside its job's allocation, with the variables that would leak
    assert nb_env["SLURM_JOB_ID"] == server.job_id and nb_env["SLURM_MEM_PER_NODE"] == "1024", nb_env
    # the child has its own allocation's variables only: the same names as a job submitted from the login side
    child_names = {k for k in child_env if k.startswith(SCHEDULER_PREFIXES)}
    clean_names = {k for k in clean_env if k.startswith(SCHEDULER_PREFIXES)}
    assert child_names == clean_names, (f"only in the notebook's child: {sorted(child_names - clean_names)}; "
                                        f"only in the clean job: {sorted(clean_names - child_names)}")
    assert child_env["SLURM_JOB_ID"] == ids["child"] and child_env["SLURM_MEM_PER_NODE"] == "308"
    # ... and no value of the notebook's that a job outside any allocation does not have
    inherited = {k: v for k, v in nb_env.items() if child_env.get(k) == v and clean_env.get(k) != v}
    assert inherited == {}, f"the child carries the notebook job's {inherited}"
    assert {k for k in ALLOCATION_VARS if k in nb_env and k not in clean_env} & child_names == set()
    # the hub's API token is in the notebook's environment, not in the child's (nor any other JUPYTERHUB_ variable)
    assert out["nb_tokens"] == ["JUPYTERHUB_API_TOKEN"] or out["nb_tokens"] == sorted(HUB_TOKENS), out["nb_tokens"]
    assert {k for k in child_env if k in HUB_TOKENS or k.startswith(("JUPYTERHUB_", "JPY_"))} == set()
    # the per-CPU memory request ran (2 ranks through srun) ...
    assert out["world_size"] == 2
    assert cluster.wait_job(ids["per_cpu"]).state == "COMPLETED"
    # ... where the same request with the notebook's environment inherited fails
    control = cluster.wait_job(ids["control"])
    log = (kernel.workdir / f"control-{ids['control']}.out").read_text()
    assert control.state == "FAILED" and "mutually exclusive" in log, (control, log)


def test_the_notebook_shows_its_own_job_and_warns_once_of_a_walltime_beyond_it(kernel: Kernel, server: Server,
                                                                                submitted: list[str]) -> None:
    # two jobs asking for more walltime (59 min) than the server's job has left (30 min at most): one warning, as
    # the user sees it (stderr in the cell's output), even with Python's warnings shown every time
    r = kernel.run("""
        import warnings
        from hpcbridge.here import here
        from hpcbridge.live import watch
        warnings.simplefilter("always")

        def one():
            return 1

        long_a = ex.with_resources(walltime="00:59:00").submit(one)
        long_b = ex.with_resources(walltime="00:59:00").submit(one)
        shown = watch(long_a)
        print(json.dumps({"ids": [long_a.job_id, long_b.job_id], "left": here().seconds_left()}))
        long_a.cancel(), long_b.cancel()
        shown.close()
    """)
    out = json.loads(next(o["text"] for o in r.outputs if o["msg_type"] == "stream" and o["name"] == "stdout"))
    submitted.extend(out["ids"])
    assert 0 < out["left"] < 30 * 60, out
    stderr = "".join(o["text"] for o in r.outputs if o["msg_type"] == "stream" and o["name"] == "stderr")
    assert stderr.count("WalltimeWarning") == 1, stderr
    assert (f"WalltimeWarning: job {out['ids'][0]} asks for walltime 0:59:00, longer than what is left of this "
            f"notebook's own allocation (Slurm job {server.job_id}: ") in stderr, stderr
    # the display says where the kernel runs: the server's own job, on its node, with the time it has left
    display = r.html("display_data")
    assert len(display) == 1, r.outputs
    assert re.search(rf'<div class="hpcbridge-here">this kernel runs inside Slurm job {server.job_id} on '
                     rf"{server.node}, 0:[0-2]\d:\d\d left</div>", display[0]), display[0]


def test_await_job_returns_while_other_cells_keep_running(kernel: Kernel, submitted: list[str]) -> None:
    # a cell starts a job and a task that awaits it, and returns at once
    r = kernel.run("""
        ticks = 0

        async def ticker():
            global ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.1)

        async def wait_for(job):
            return await job

        def slow(x):
            import time
            time.sleep(8)
            return x + 1

        tick_task = asyncio.ensure_future(ticker())
        slow_job = ex.submit(slow, 41)
        waiter = asyncio.ensure_future(wait_for(slow_job))
        print(slow_job.job_id, waiter.done())
    """, timeout=60)
    job_id, done = r.text.split()
    submitted.append(job_id)
    assert done == "False"
    # other cells run while the await is pending
    r = kernel.run("print(sum(range(1000)), slow_job.done(), waiter.done())", timeout=30)
    assert r.text.split() == ["499500", "False", "False"]
    # `await job` in a cell returns the job's value; the event loop kept running meanwhile
    r = kernel.run("""
        t0 = ticks
        value = await slow_job
        print(value, await waiter, ticks - t0 > 10)
        _ = tick_task.cancel()
    """, timeout=240)
    assert r.text.split() == ["42", "42", "True"]


def test_stopping_the_server_ends_its_job_not_the_jobs_it_submitted(kernel: Kernel, server: Server, hub: Http,
                                                                     cluster: LiveCluster,
                                                                     submitted: list[str]) -> None:
    r = kernel.run("""
        def long_sleep():
            import time
            time.sleep(600)

        long_job = ex.submit(long_sleep)
        while long_job.state.value != "RUNNING":
            time.sleep(0.5)
        print(long_job.job_id)
    """, timeout=120)
    long_id = r.text.strip()
    submitted.append(long_id)

    stop_server(hub, cluster, None)
    assert server_model(hub) is None
    assert spawner_accounting(cluster, server.job_id).startswith("CANCELLED")
    # the job the notebook submitted still runs
    state = cluster.run(["squeue", "-h", "-j", long_id, "-o", "%T"], timeout=30).stdout.strip()
    assert state == "RUNNING", f"job {long_id} submitted from the stopped notebook shows {state!r} in squeue"

    # a new server lists it (the registry lives in alice's home)
    again = start_server(hub, cluster)
    try:
        k2 = open_kernel(hub, kernel.workdir)
        try:
            r = k2.run("""
                hpcbridge_cli = os.path.join(os.path.dirname(sys.executable), "hpcbridge")
                print(subprocess.run([hpcbridge_cli, "status"], capture_output=True, text=True, check=True).stdout)
            """, timeout=120)
        finally:
            k2.close()
    finally:
        stop_server(hub, cluster, again.job_id)
    rows = [line.split() for line in r.text.splitlines()]
    assert any(long_id in row and "RUNNING" in row for row in rows), r.text
