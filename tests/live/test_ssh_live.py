"""The SSH transport against the live test cluster, from the user's "laptop" (the client namespace).

The laptop reaches only the login node's sshd (and the bastion's): no slurmctld, no shared /home or /scratch.
Each test runs a small Python program there (``python -c``) through ``tests/cluster/client`` with the working tree
on PYTHONPATH (the jobs get it too, through the site's env), and asserts on what it reports and on what the
cluster shows (sacct, as the same user, from the cluster side).

Fixtures on the cluster (tests/cluster/up, docs/ssh.md): ``testcluster-login`` (port 22, quiet), ``testcluster-
login-noisy`` (port 2222: ~/.bashrc prints on stdout and stderr, MaxSessions 10, an sbatch that sleeps while
~/.hpcbridge-test-slow-sbatch exists), ``testcluster-bastion`` and ``testcluster-login-via-bastion`` (ProxyJump to
the login node's cluster address), ``~/.ssh/id_ed25519_enc`` (an encrypted key), ``testcluster-login-mfa`` (port
2223: the key, then a keyboard-interactive password from PAM, kept in ~/.hpcbridge-test-mfa-password),
``tests/cluster/ctl ssh-cut PORT``. The ssh-agent test starts its own agent.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import LiveCluster


REPO = Path(__file__).resolve().parents[2]
LOGIN_HOST_KEY = Path("/var/lib/hpcbridge-testcluster/ssh/ssh_host_ed25519_key.pub")
PASSPHRASE = "hpcbridge-test-passphrase"  # tests/cluster/common.sh SSH_TEST_PASSPHRASE

PRELUDE = r'''
import json, logging, os, socket, subprocess, sys, threading, time
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
from hpcbridge import Executor, attach, errors
from hpcbridge.sites import load_site
from hpcbridge.transport import make_transport, ssh
from hpcbridge.transport.ssh import pool as ssh_pool, transport as ssh_files
CTL = "/opt/hpcbridge-test/src/tests/cluster/ctl"

def site(host="testcluster-login", ssh_keys=None, **kw):
    return load_site("testcluster-ssh", env={"PYTHONPATH": "__REPO__"}, ssh={"host": host, **(ssh_keys or {})}, **kw)

def cut(conn):
    p = subprocess.run(["sudo", "-n", CTL, "ssh-cut", str(conn.local_port)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    print("CUT " + p.stdout.strip(), file=sys.stderr, flush=True)

def secrets_in(roots, secret):
    """Where ``secret`` (str) is kept in the objects reachable from ``roots`` (attributes, containers, closures,
    bound methods, weak references, BytesIO buffers such as paramiko's Messages; not modules or classes)."""
    import collections, io, types, weakref
    want, found, seen = secret.encode(), [], set()
    todo = collections.deque((r, name) for name, r in roots.items())
    while todo and len(seen) < 2_000_000:
        obj, path = todo.popleft()
        if id(obj) in seen or isinstance(obj, (types.ModuleType, type, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if secret in obj:
                found.append(path)
            continue
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if want in bytes(obj):
                found.append(path)
            continue
        if isinstance(obj, io.BytesIO):
            if want in obj.getvalue():
                found.append(path)
        if isinstance(obj, dict):
            todo.extend((v, f"{path}[{k!r}]") for k, v in list(obj.items()))
            todo.extend((k, f"{path}.<key>") for k in list(obj))
        elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
            todo.extend((v, f"{path}[{i}]") for i, v in enumerate(list(obj)))
        if isinstance(obj, weakref.ref):
            todo.append((obj(), f"{path}()"))
        if isinstance(obj, types.MethodType):
            todo.append((obj.__self__, f"{path}.__self__"))
            obj = obj.__func__
        if isinstance(obj, types.FunctionType):
            cells = [c.cell_contents for c in (obj.__closure__ or ()) if c.cell_contents is not None]
            todo.extend((v, f"{path}.<closure>") for v in cells + list(obj.__defaults__ or ()))
            continue
        for name in getattr(obj, "__dict__", {}) or {}:
            todo.append((getattr(obj, name, None), f"{path}.{name}"))
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if isinstance(name, str) and hasattr(obj, name):
                    todo.append((getattr(obj, name), f"{path}.{name}"))
    return found
'''


def laptop(cluster: LiveCluster, code: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``code`` (after PRELUDE) with python on alice's laptop; its RESULT line, parsed."""
    return cluster.laptop_python(PRELUDE.replace("__REPO__", str(REPO)) + code, timeout=timeout)


def test_submit_map_exception_cancel_over_ssh(cluster: LiveCluster) -> None:
    r = laptop(cluster, r'''
# the laptop cannot reach slurmctld nor see the cluster's shared folders
reach = error(lambda: socket.create_connection(("10.77.0.1", 6817), timeout=3))
ex = Executor(site=site(), walltime="00:05:00")
job = ex.submit(pow, 2, 10)
value = job.result(timeout=240)

def square(x):
    return x * x

squares = list(ex.map(square, range(5), timeout=300))

def boom(x):
    raise ValueError(f"boom {x}")

failing = ex.submit(boom, 7)
try:
    failing.result(timeout=240)
    raised = None
except ValueError as exc:
    raised = [str(exc), str(exc.__cause__)]
slow = ex.submit(time.sleep, 600)
deadline = time.time() + 120
while not slow.job_id.isdigit() and time.time() < deadline:
    time.sleep(0.2)
cancelled = slow.cancel()
report(reach=reach, scratch=os.path.exists("/scratch/alice"), value=value, job_id=job.job_id, squares=squares,
       raised=raised, failing_id=failing.job_id, cancelled=cancelled, slow_id=slow.job_id,
       slow_state=slow.state.value, stats=vars(ex._backend.transport.stats))
''')
    assert r["reach"] is not None and r["reach"][0] == "OSError"  # no route to slurmctld from the laptop
    assert r["scratch"] is False
    assert r["value"] == 1024
    assert r["squares"] == [0, 1, 4, 9, 16]
    assert r["raised"][0] == "boom 7"
    assert "boom 7" in r["raised"][1] and "Remote traceback" in r["raised"][1]
    assert r["cancelled"] is True and r["slow_state"] == "CANCELLED"
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"
    assert cluster.wait_job(r["failing_id"], timeout=120).state == "FAILED"
    assert cluster.wait_job(r["slow_id"], timeout=120).state == "CANCELLED"
    assert r["stats"]["connects"] == 1 and r["stats"]["reconnects"] == 0  # one connection for everything


def test_attach_from_a_new_process_over_ssh(cluster: LiveCluster) -> None:
    first = laptop(cluster, r'''
ex = Executor(site=site(), walltime="00:05:00")
job = ex.submit(str.upper, "attached over ssh")
report(job_id=job.job_id)
''')
    second = laptop(cluster, r'''
job = attach(JOB_ID, site=site())
report(value=job.result(timeout=240), state=job.state.value)
'''.replace("JOB_ID", repr(first["job_id"])))
    assert second == {"value": "ATTACHED OVER SSH", "state": "COMPLETED", "_stderr": second["_stderr"]}


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]  # "256 SHA256:... comment (ED25519)"


def test_unknown_host_key_refused_then_trusted_with_the_printed_command(cluster: LiveCluster) -> None:
    name = f"known_hosts-test-{uuid.uuid4().hex[:8]}"
    r = laptop(cluster, r'''
kh = os.path.expanduser("~/.ssh/NAME")
open(kh, "w").close()
s = site(ssh_keys={"known_hosts": kh})
unknown = error(lambda: Executor(site=s))
command = unknown[1].split("trust it with: ", 1)[1]
fixed = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
hostname = Executor(site=s)._backend.transport.run(["hostname"]).stdout.strip()
# a changed key: the bastion's key filed under the login node's address (another file: another connection)
bastion = [l for l in open(os.path.expanduser("~/.ssh/known_hosts")) if l.startswith("testcluster-bastion")][0]
with open(kh + "-changed", "w") as fh:
    fh.write("10.78.0.1 " + " ".join(bastion.split()[1:3]) + "\n")
changed = error(lambda: Executor(site=site(ssh_keys={"known_hosts": kh + "-changed"})))
os.unlink(kh)
os.unlink(kh + "-changed")
report(unknown=unknown, command=command, fixed=fixed.returncode, hostname=hostname, changed=changed)
'''.replace("NAME", name))
    fingerprint = _fingerprint(LOGIN_HOST_KEY)
    cls, message = r["unknown"]
    assert cls == "UnknownHostKeyError"
    assert "\n" not in message and fingerprint in message and "ssh-ed25519" in message
    assert r["command"] == f"ssh-keyscan -t ed25519 10.78.0.1 >> ~/.ssh/{name}"
    assert r["fixed"] == 0 and r["hostname"] == "login"  # the printed command really trusts the host
    cls, message = r["changed"]
    assert cls == "HostKeyChangedError"
    assert message.startswith("WARNING: HOST KEY OF testcluster-login (alice@10.78.0.1:22) HAS CHANGED")
    assert fingerprint in message and "ssh-keygen -R 10.78.0.1" in message


def test_proxy_jump_through_the_bastion(cluster: LiveCluster) -> None:
    r = laptop(cluster, r'''
direct = error(lambda: socket.create_connection(("10.77.0.5", 22), timeout=3))
ex = Executor(site=site("testcluster-login-via-bastion"), walltime="00:05:00")
transport = ex._backend.transport
job = ex.submit(socket.gethostname)
report(direct=direct, label=transport.spec.label, login=transport.run(["hostname"]).stdout.strip(),
       node=job.result(timeout=240), job_id=job.job_id)
''')
    assert r["direct"] is not None  # the login node's cluster address is reachable only through the bastion
    assert r["label"] == "testcluster-login-via-bastion (alice@10.77.0.5:22 via testcluster-bastion)"
    assert r["login"] == "login"
    assert r["node"] in cluster.nodes
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"


def test_noisy_login_banner_and_max_sessions(cluster: LiveCluster) -> None:
    r = laptop(cluster, r'''
ex = Executor(site=site("testcluster-login-noisy"), walltime="00:05:00")
t = ex._backend.transport
echo = t.run(["echo", "a b", "'c'"])
both = t.run(["sh", "-c", "printf 'out'; printf 'err' >&2; exit 3"])
files = {f"{ex._backend.root}/noise-test/{i}.txt": f"file {i}".encode() for i in range(50)}
t.makedirs(f"{ex._backend.root}/noise-test", f"{ex._backend.root}/noise-test/sub")
t.write_files(files)
back = t.read_files(list(files))
one_file = f"{ex._backend.root}/noise-test/7.txt"
ranges = [t.read_from(one_file, 0), t.read_from(one_file, 5), t.read_from(one_file, 6), t.read_from(one_file, 99),
          t.read_from(f"{ex._backend.root}/noise-test/none.txt", 0), t.read_tail(one_file, 2)]
t.remove_tree(f"{ex._backend.root}/noise-test")
results, errors_seen = [], []
def one(i):
    try:
        results.append(t.run(["sh", "-c", f"sleep 0.5; echo {i}"]).stdout.strip())
    except Exception as exc:
        errors_seen.append(repr(exc))
threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
[th.start() for th in threads]
[th.join(120) for th in threads]
job = ex.submit(pow, 3, 3)
report(echo=[echo.returncode, echo.stdout, echo.stderr], both=[both.returncode, both.stdout, both.stderr],
       files_ok=back == files, ranges=[None if b is None else b.decode() for b in ranges],
       concurrent=sorted(results, key=int), errors=errors_seen,
       banner=(t.conn.banner or b"").decode(), value=job.result(timeout=240), job_id=job.job_id)
''')
    assert r["echo"] == [0, "a b 'c'\n", ""]  # no "Welcome", no "424242", no half line
    assert r["both"] == [3, "out", "err"]
    assert r["files_ok"] is True
    assert r["ranges"] == ["file 7", "7", "", "", None, " 7"]
    assert r["errors"] == [] and r["concurrent"] == [str(i) for i in range(24)]  # MaxSessions 10 on that port
    assert "login node (authorised test users only)" in r["banner"]
    assert r["value"] == 27
    assert r["job_id"] not in ("999999", "424242")  # the .bashrc's fake sbatch lines were not taken for the id
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"


def test_connection_cut_mid_map_exactly_once(cluster: LiveCluster) -> None:
    """A 200-call map in 4 array jobs; the connection is cut while the 2nd sbatch is in flight and again while
    results come in. The map completes, and the cluster has exactly 4 jobs (200 tasks), one per submission."""
    r = laptop(cluster, r'''
ex = Executor(site=site("testcluster-login-noisy", max_array_size=50), walltime="00:05:00")
t = ex._backend.transport
flag = t.expanduser("~/.hpcbridge-test-slow-sbatch")
t.write_files({flag: b"1.5"})  # the noisy port's sbatch sleeps 1.5 s first: the cut lands while it is in flight
sent = {"sbatch": 0}
original = ssh.Connection._send_exec
def send_exec(self, ch, command):
    original(self, ch, command)
    if "sbatch" in command:
        sent["sbatch"] += 1
        if sent["sbatch"] == 2:
            while not ch.recv_ready():  # the remote shell started: sbatch is on its way
                time.sleep(0.001)
            cut(self)
ssh.Connection._send_exec = send_exec

def square(x):
    return x * x

values = []
try:
    for i, v in enumerate(ex.map(square, range(200), timeout=500)):
        values.append(v)
        if i == 60:
            cut(t.conn)  # ... and again while the results come in
finally:
    ssh.Connection._send_exec = original
    t.run(["rm", "-f", flag])
report(ok=values == [x * x for x in range(200)], n=len(values), stats=vars(t.stats),
       subs=[[s.tag, s.job_id] for s in ex._submissions])
''', timeout=600)
    assert r["ok"] is True and r["n"] == 200
    assert r["stats"]["reconnects"] == 2
    assert len(r["subs"]) == 4
    # the interrupted 2nd submission: its outcome came from its record or its tag, it was not sent again
    assert any(r["subs"][1][0] in line and "not submitted again" in line for line in r["_stderr"].splitlines())
    assert "submitting it again" not in r["_stderr"]
    tags = {tag: job_id for tag, job_id in r["subs"]}
    deadline = time.monotonic() + 60  # sacct lags the last tasks' ends by a moment
    while True:
        p = cluster.run(["sacct", "-X", "-n", "-P", "-S", "now-1hours", "--format=JobID,Comment"], timeout=60)
        seen: dict[str, set[str]] = {}
        tasks = 0
        for line in p.stdout.splitlines():
            job, _, comment = line.partition("|")
            tag = comment.removeprefix("hpcbridge:")
            if tag in tags:
                seen.setdefault(tag, set()).add(job.split("_")[0])
                tasks += 1
        if tasks >= 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == {tag: {job_id} for tag, job_id in tags.items()}  # one job per submission, no duplicate
    assert tasks == 200


def test_error_classes_and_messages(cluster: LiveCluster) -> None:
    r = laptop(cluster, r'''
unreachable = error(lambda: Executor(site=site("10.78.0.99", ssh_keys={"connect_timeout_s": 3})))
refused = error(lambda: Executor(site=site(ssh_keys={"user": "bob"})))
t = Executor(site=site())._backend.transport
remote = error(lambda: t.makedirs("/root/hpcbridge-forbidden"))
missing = error(lambda: t.run(["no-such-command-here"]))
false = t.run(["false"]).returncode
report(unreachable=unreachable, refused=refused, remote=remote, missing=missing, false=false)
''')
    cls, message = r["unreachable"]
    assert cls == "HostUnreachableError"
    assert message.startswith("cannot reach 10.78.0.99 at 10.78.0.99:22: ") and "proxy_jump" in message
    cls, message = r["refused"]
    assert cls == "AuthenticationError"
    assert message.startswith("bob@10.78.0.1:22 refused the login (tried ~/.ssh/id_ed25519; the server allows: ")
    assert "ssh-copy-id -i ~/.ssh/id_ed25519.pub bob@testcluster-login" in message
    cls, message = r["remote"]
    assert cls == "RemoteCommandError"
    assert message.startswith("could not create /root/hpcbridge-forbidden on testcluster-login")
    assert "Permission denied" in message
    assert r["missing"] == [
        "TransportError",
        "command not found on testcluster-login: 'no-such-command-here' (is it installed and on the PATH of "
        "non-interactive logins there?)",
    ]
    assert r["false"] == 1  # a failing command is a result, not an error


def test_an_upload_whose_local_file_cannot_be_read_fails_as_such_and_leaves_nothing(cluster: LiveCluster) -> None:
    """A local file that cannot be read (no permission, a folder, a disk error after the first MiB) raises its own
    error naming the file, at once: it is not taken for a dropped connection (no reconnect, which would ask an MFA
    question again, no minute of retries, no "check the network"). The stream cut short by the disk error leaves
    nothing on the cluster (cat exits 0 at its end; the byte count decides), and the connection goes on working."""
    r = laptop(cluster, r'''
import errno, shutil, tempfile
t = make_transport(site())
folder = t.expanduser("~/.hpcbridge-upload-" + os.urandom(4).hex())
t.makedirs(folder)
local = tempfile.mkdtemp(prefix="upload-src-")
data = os.urandom(3 << 20)
path = os.path.join(local, "data")
with open(path, "wb") as fh:
    fh.write(data)
denied = os.path.join(local, "denied")
with open(denied, "wb") as fh:
    fh.write(b"not for you")
os.chmod(denied, 0)
failed = {"denied": error(lambda: t.upload(denied, folder + "/denied")),
          "folder": error(lambda: t.upload(local, folder + "/folder"))}
real = ssh_files._file_chunks
def failing_disk(name, size, total):  # the first MiB reads, then the disk fails (as _file_chunks reports it)
    chunks = real(name, size, total)
    yield next(chunks)
    raise OSError(errno.EIO, "Input/output error", name)
ssh_files._file_chunks = failing_disk
started = time.monotonic()
failed["eio"] = error(lambda: t.upload(path, folder + "/eio"))
eio_s = time.monotonic() - started
ssh_files._file_chunks = real
# the cluster side ends the cut-short upload by itself: wait until its script (its argv names the temporary
# file; the pattern does not match pgrep's own command line) has exited
deadline = time.monotonic() + 30
while t.run(["pgrep", "-f", "hpcbridge-tmp-[0-9a-f]"]).returncode == 0 and time.monotonic() < deadline:
    time.sleep(0.2)
left = t.listdir(folder)
t.upload(path, folder + "/ok")
same = t.download(folder + "/ok") == data
t.remove_tree(folder)
os.chmod(denied, 0o600)
shutil.rmtree(local)
report(failed=failed, eio_s=eio_s, left=left, same=same, path=path, denied=denied, local=local, stats=vars(t.stats))
''')
    assert r["failed"] == {
        "denied": ["PermissionError", f"[Errno 13] Permission denied: '{r['denied']}'"],
        "folder": ["IsADirectoryError", f"[Errno 21] Is a directory: '{r['local']}'"],
        "eio": ["OSError", f"[Errno 5] Input/output error: '{r['path']}'"],
    }
    assert r["eio_s"] < 10  # no reconnect window of retries
    assert r["left"] == []  # neither the cut-short file in place nor its temporary file
    assert r["same"] is True
    assert r["stats"]["connects"] == 1 and r["stats"]["reconnects"] == 0, r["_stderr"]
    assert "reconnect" not in r["_stderr"] and "dropped" not in r["_stderr"]


def test_encrypted_key_passphrase_asked_once_per_connection(cluster: LiveCluster) -> None:
    r = laptop(cluster, r'''
asked = []
def prompt(text, echo):
    asked.append(text)
    return "PASSPHRASE"
ssh.set_prompt(prompt)
s = site(ssh_keys={"identity_file": "~/.ssh/id_ed25519_enc"})
t = make_transport(s)
names = [t.run(["hostname"]).stdout.strip() for _ in range(3)]
cut(t.conn)
names.append(t.run(["hostname"]).stdout.strip())  # reconnected: the decrypted key is reused, no new question
secrets = secrets_in({"transport": t, "pool": ssh_pool._POOL}, "PASSPHRASE")
ssh.set_prompt(lambda text, echo: "wrong")
wrong = error(lambda: make_transport(site(ssh_keys={"identity_file": "~/.ssh/id_ed25519_enc", "port": 22,
                                                    "connect_timeout_s": 9})).connect())
report(asked=asked, names=names, method=t.conn.auth_method, reconnects=t.stats.reconnects, secrets=secrets,
       wrong=wrong)
'''.replace("PASSPHRASE", PASSPHRASE))
    assert r["asked"] == ["Passphrase for key ~/.ssh/id_ed25519_enc: "]
    assert r["names"] == ["login"] * 4 and r["reconnects"] == 1
    assert r["method"] == "publickey (~/.ssh/id_ed25519_enc)"
    assert r["secrets"] == []
    assert r["wrong"][0] == "AuthenticationError"
    assert r["wrong"][1].startswith("wrong passphrase for ~/.ssh/id_ed25519_enc")


def test_ssh_agent_key_logs_in_when_no_identity_file_exists(cluster: LiveCluster) -> None:
    """An ssh-agent on the laptop holds the key; the ssh config names no IdentityFile and the home has no key file
    at all: the login goes through the agent, and a job runs. Without the agent the same login is refused."""
    r = laptop(cluster, r'''
import shutil, tempfile
real = os.path.expanduser("~")
agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, timeout=30, check=True).stdout
for line in agent.splitlines():
    if line.startswith(("SSH_AUTH_SOCK=", "SSH_AGENT_PID=")):
        name, value = line.split(";", 1)[0].split("=", 1)
        os.environ[name] = value
home = tempfile.mkdtemp(prefix="agent-home-", dir=real)
try:
    added = subprocess.run(["ssh-add", real + "/.ssh/id_ed25519"], capture_output=True, text=True, timeout=30)
    listed = subprocess.run(["ssh-add", "-l"], capture_output=True, text=True, timeout=30).stdout
    # a laptop home with an ssh config and known_hosts, and no key file: only the agent can log in
    os.makedirs(home + "/.ssh", mode=0o700)
    shutil.copy(real + "/.ssh/known_hosts", home + "/.ssh/known_hosts")
    with open(home + "/.ssh/config", "w") as fh:
        fh.write("Host testcluster-agent\n    HostName 10.78.0.1\n    User alice\n    StrictHostKeyChecking yes\n")
    os.environ["HOME"] = home
    ex = Executor(site=site("testcluster-agent"), walltime="00:05:00")
    t = ex._backend.transport
    job = ex.submit(pow, 2, 5)
    value = job.result(timeout=240)
    sock = os.environ.pop("SSH_AUTH_SOCK")
    without = error(lambda: make_transport(site("testcluster-agent", ssh_keys={"connect_timeout_s": 9})).connect())
    os.environ["SSH_AUTH_SOCK"] = sock
    report(added=added.returncode, listed=listed, identity_files=list(t.spec.identity_files),
           method=t.conn.auth_method, value=value, job_id=job.job_id, without=without,
           key_files=sorted(os.listdir(home + "/.ssh")))
finally:
    os.environ["HOME"] = real
    subprocess.run(["ssh-agent", "-k"], capture_output=True, timeout=30)
    shutil.rmtree(home, ignore_errors=True)
''')
    laptop_key = cluster.client(["ssh-keygen", "-lf", ".ssh/id_ed25519.pub"]).stdout.split()[1]
    assert r["added"] == 0 and laptop_key in r["listed"]
    assert r["key_files"] == ["config", "known_hosts"] and r["identity_files"] == []
    assert r["method"] == f"publickey (ssh-agent key {laptop_key})"
    assert r["value"] == 32
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"
    cls, message = r["without"]
    assert cls == "AuthenticationError"
    assert message.startswith("alice@10.78.0.1:22 refused the login (tried no key (no ssh-agent keys, no identity "
                              "file); the server allows: publickey")


def test_keyboard_interactive_prompt_asked_once_per_connection_and_never_stored(cluster: LiveCluster) -> None:
    """testcluster-login-mfa wants the key and then a keyboard-interactive answer (PAM asks the password). Several
    commands, a job, an upload and a download on one connection: one question. A reconnect asks again. The
    answer is kept nowhere reachable from the transport, the backend or the connection pool."""
    r = laptop(cluster, r'''
password = open(os.path.expanduser("~/.hpcbridge-test-mfa-password")).read().strip()
asked = []
def prompt(text, echo):
    asked.append([text, echo])
    return password
ssh.set_prompt(prompt)
ex = Executor(site=site("testcluster-login-mfa"), walltime="00:05:00")
t = ex._backend.transport
names = [t.run(["hostname"]).stdout.strip() for _ in range(3)]
folder = f"{ex._backend.root}/mfa-test"
t.makedirs(folder)
blob = os.urandom(1 << 20)
t.upload(blob, folder + "/blob")
same = t.download(folder + "/blob") == blob
job = ex.submit(pow, 2, 7)
value = job.result(timeout=240)
first = list(asked)
stored_first = secrets_in({"transport": t, "backend": ex._backend, "pool": ssh_pool._POOL}, password)
cut(t.conn)
names.append(t.run(["hostname"]).stdout.strip())
t.remove_tree(folder)
stored = secrets_in({"transport": t, "backend": ex._backend, "pool": ssh_pool._POOL}, password)
ssh.set_prompt(lambda text, echo: "wrong-" + password)
wrong = error(lambda: make_transport(site("testcluster-login-mfa", ssh_keys={"connect_timeout_s": 9})).connect())
report(first=first, asked=asked, names=names, same=same, value=value, job_id=job.job_id,
       method=t.conn.auth_method, connects=t.stats.connects, reconnects=t.stats.reconnects,
       stored_first=stored_first, stored=stored, wrong=wrong)
''')
    question = ["[testcluster-login-mfa] Password: ", False]
    assert r["first"] == [question]  # once for the whole first connection: commands, a job, an upload and a download
    assert r["asked"] == [question, question]  # and once more after the reconnect
    assert r["names"] == ["login"] * 4 and r["same"] is True and r["value"] == 128
    assert r["method"] == "publickey + keyboard-interactive"
    assert r["connects"] == 2 and r["reconnects"] == 1
    assert r["stored_first"] == [] and r["stored"] == []
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"
    cls, message = r["wrong"]
    assert cls == "AuthenticationError"
    assert message.startswith("alice@10.78.0.1:2223 refused the login (tried ~/.ssh/id_ed25519, keyboard-interactive")


SLOW_SBATCH_CUT = r'''
import shlex
ex = Executor(site=site("testcluster-login-noisy"), walltime="00:05:00", name="NAME")
t = ex._backend.transport
flag = t.expanduser("~/.hpcbridge-test-slow-sbatch")
t.write_files({flag: b"SLOW"})  # the noisy port's sbatch sleeps SLOW s first
original = ssh.Connection._send_exec
state = {"sbatch": 0}
def send_exec(self, ch, command):
    if "sbatch" not in command or state["sbatch"]:
        return original(self, ch, command)
    state["sbatch"] += 1
    words = shlex.split(command)
    marker = words[words.index("hpcbridge-submit") + 1]
    if MODE == "before":  # the link dies as the command goes out: it never reaches the login node's shell
        cut(self)
        deadline = time.time() + 30
        while self._transport.is_active() and time.time() < deadline:
            time.sleep(0.01)
        return original(self, ch, command)
    original(self, ch, command)
    while t.run(["test", "-e", marker]).returncode != 0:  # the submission started: its marker exists
        time.sleep(0.05)
    cut(self)  # ... and sbatch is sleeping on the login node
ssh.Connection._send_exec = send_exec
started = time.time()
try:
    job = ex.submit(pow, 3, 4)
    submit_s = time.time() - started
    value = job.result(timeout=240)
finally:
    ssh.Connection._send_exec = original
    t.run(["rm", "-f", flag])
report(value=value, job_id=job.job_id, submit_s=submit_s, tag=ex._submissions[0].tag, stats=vars(t.stats))
'''


def test_cut_while_a_slow_sbatch_runs_past_the_old_window_submits_exactly_once(cluster: LiveCluster) -> None:
    """sbatch takes 15 s on the login node (longer than the 10 s after which a job not found by its tag used to be
    submitted again); the connection is cut once its marker exists. The reconnect sees the marker, never sends the
    command again, and takes the job id from the record the wrapper leaves (or from squeue): one job, the right
    result."""
    name = f"slow-cut-{uuid.uuid4().hex[:6]}"
    r = laptop(cluster, SLOW_SBATCH_CUT.replace("NAME", name).replace("SLOW", "15").replace("MODE", "'after'"))
    assert r["value"] == 81
    assert r["submit_s"] > 14  # it waited for the slow sbatch instead of giving up at 10 s
    assert r["stats"]["reconnects"] == 1
    assert any(r["tag"] in line and "not submitted again" in line for line in r["_stderr"].splitlines()), r["_stderr"]
    assert "submitting it again" not in r["_stderr"]
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"
    assert cluster.jobs_tagged(r["tag"], r["job_id"]) == [r["job_id"]]  # exactly one job in sacct


def test_cut_before_the_submission_started_sends_it_again_exactly_once(cluster: LiveCluster) -> None:
    """The connection dies as the submit command goes out, so it never starts: no marker. That proves it never
    ran, so it is sent again (the marker would stop a late original): one job, the right result."""
    name = f"cut-before-{uuid.uuid4().hex[:6]}"
    r = laptop(cluster, SLOW_SBATCH_CUT.replace("NAME", name).replace("SLOW", "0").replace("MODE", "'before'"))
    assert r["value"] == 81
    assert "does not exist, so the command never started: submitting it again" in r["_stderr"]
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"
    assert cluster.jobs_tagged(r["tag"], r["job_id"]) == [r["job_id"]]
