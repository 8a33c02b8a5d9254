"""The SSH transport against the live test cluster, from the user's "laptop" (the client namespace).

The laptop reaches only the login node's sshd (and the bastion's): no slurmctld, no shared /home or /scratch.
Each test runs a small Python program there (``python -c``) through ``tests/cluster/client`` with the working tree
on PYTHONPATH (the jobs get it too, through the site's env), and asserts on what it reports and on what the
cluster shows (sacct, as the same user, from the cluster side).

Fixtures on the cluster (tests/cluster/up, docs/ssh.md): ``testcluster-login`` (port 22, quiet), ``testcluster-
login-noisy`` (port 2222: ~/.bashrc prints on stdout and stderr, MaxSessions 10, an sbatch that sleeps while
~/.hpcbridge-test-slow-sbatch exists), ``testcluster-bastion`` and ``testcluster-login-via-bastion`` (ProxyJump to
the login node's cluster address), ``~/.ssh/id_ed25519_enc`` (an encrypted key), ``tests/cluster/ctl ssh-cut PORT``.
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
from hpcbridge.transport import ssh
CTL = "/opt/hpcbridge-test/src/tests/cluster/ctl"

def site(host="testcluster-login", ssh_keys=None, **kw):
    return load_site("testcluster-ssh", env={"PYTHONPATH": "__REPO__"}, ssh={"host": host, **(ssh_keys or {})}, **kw)

def cut(conn):
    p = subprocess.run(["sudo", "-n", CTL, "ssh-cut", str(conn.local_port)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    print("CUT " + p.stdout.strip(), file=sys.stderr, flush=True)

def report(**kw):
    print("RESULT " + json.dumps(kw), flush=True)

def error(fn):
    try:
        fn()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None
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
    assert "was found by its tag hpcbridge:" + r["subs"][1][0] in r["_stderr"]
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


def test_encrypted_key_passphrase_asked_once_per_connection(cluster: LiveCluster) -> None:
    r = laptop(cluster, r'''
asked = []
def prompt(text, echo):
    asked.append(text)
    return "PASSPHRASE"
ssh.set_prompt(prompt)
s = site(ssh_keys={"identity_file": "~/.ssh/id_ed25519_enc"})
t = ssh.SSHTransport(s)
names = [t.run(["hostname"]).stdout.strip() for _ in range(3)]
cut(t.conn)
names.append(t.run(["hostname"]).stdout.strip())  # reconnected: the decrypted key is reused, no new question
secrets = [k for k, v in vars(t.conn).items() if isinstance(v, str) and "PASSPHRASE" in v]
ssh.set_prompt(lambda text, echo: "wrong")
wrong = error(lambda: ssh.SSHTransport(site(ssh_keys={"identity_file": "~/.ssh/id_ed25519_enc", "port": 22,
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
