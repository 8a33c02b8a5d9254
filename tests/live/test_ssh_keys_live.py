"""The ``[ssh]`` keys ``proxy_jump``, ``config_file`` and ``keepalive_s`` of a site-config, and an SSH host name
that does not resolve, live from alice's "laptop" (the client namespace, tests/cluster/client).

As in tests/live/test_ssh_live.py, each test runs a small program on the laptop with the working tree on
PYTHONPATH (the jobs get it through the site's env) and asserts on what it reports and on what the cluster shows.
The laptop reaches the login node at 10.78.0.1 and the bastion at 10.79.0.1; the login node's cluster address
10.77.0.5 only through the bastion. Its ~/.ssh/known_hosts holds the login node's key under 10.78.0.1 and
10.77.0.5 and the bastion's under 10.79.0.1 (tests/cluster/up).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import LiveCluster

REPO = Path(__file__).resolve().parents[2]

PRELUDE = r'''
import json, logging, os, re, socket, subprocess, sys, time
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
from hpcbridge import Executor
from hpcbridge.sites import load_site
from hpcbridge.transport import make_transport

def site(host, **ssh_keys):
    return load_site("testcluster-ssh", env={"PYTHONPATH": "__REPO__"}, ssh={"host": host, **ssh_keys})

'''


def laptop(cluster: LiveCluster, code: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``code`` (after PRELUDE) with python on alice's laptop; its RESULT line, parsed."""
    return cluster.laptop_python(PRELUDE.replace("__REPO__", str(REPO)) + code, timeout=timeout)


def test_proxy_jump_key_reaches_the_login_node_through_the_bastion(cluster: LiveCluster) -> None:
    """``proxy_jump = "alice@10.79.0.1:22"`` in the site's [ssh] table, for a host that ~/.ssh/config does not
    know (10.77.0.5, the login node's cluster address, which the laptop cannot reach by itself): the connection
    goes through the bastion (the login node sees it come from the bastion's cluster address 10.77.0.6) and a job
    runs. Without the key the same site cannot connect."""
    before = cluster.squeue_ids()
    r = laptop(cluster, r'''
direct = error(lambda: Executor(site=site("10.77.0.5", connect_timeout_s=3)))
ex = Executor(site=site("10.77.0.5", proxy_jump="alice@10.79.0.1:22"), walltime="00:05:00")
t = ex._backend.transport
job = ex.submit(socket.gethostname)
report(direct=direct, label=t.spec.label, jumps=[j.label for j in t.spec.jumps],
       seen_from=t.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split(),
       login=t.run(["hostname"]).stdout.strip(), node=job.result(timeout=240), job_id=job.job_id)
''')
    cls, message = r["direct"]
    assert cls == "HostUnreachableError" and message.startswith("cannot reach 10.77.0.5 at 10.77.0.5:22: ")
    assert "proxy_jump" in message
    assert r["label"] == "alice@10.77.0.5:22 via 10.79.0.1"
    assert r["jumps"] == ["alice@10.79.0.1:22"]
    assert r["seen_from"][0] == "10.77.0.6" and r["seen_from"][2:] == ["10.77.0.5", "22"]  # from the bastion
    assert r["login"] == "login"
    assert r["node"] in cluster.nodes
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"
    assert cluster.squeue_ids() - before == set()


def test_config_file_key_resolves_an_alias_and_an_unknown_host_name_is_refused(cluster: LiveCluster) -> None:
    """``config_file`` names an OpenSSH client config the test writes (not ~/.ssh/config): its Host alias, with
    HostName, Port and User, is what the site connects to, and a job runs. The same alias without
    ``config_file`` is a host name that does not resolve: HostUnreachableError naming it and what to check, raised
    when the executor is made, so nothing is submitted."""
    alias = f"hb-config-{uuid.uuid4().hex[:8]}"
    before = cluster.squeue_ids()
    r = laptop(cluster, r'''
alias = "ALIAS"
path = os.path.expanduser("~/.ssh/" + alias)
with open(path, "w") as fh:
    fh.write(f"Host {alias}\n    HostName 10.78.0.1\n    Port 22\n    User alice\n"
             "    IdentityFile ~/.ssh/id_ed25519\n    IdentitiesOnly yes\n")
try:
    started = time.monotonic()
    unknown = error(lambda: Executor(site=site(alias, connect_timeout_s=5)))
    unknown_s = time.monotonic() - started
    in_default_config = alias in open(os.path.expanduser("~/.ssh/config")).read()
    ex = Executor(site=site(alias, config_file="~/.ssh/" + alias), walltime="00:05:00")
    t = ex._backend.transport
    job = ex.submit(pow, 2, 9)
    report(unknown=unknown, unknown_s=unknown_s, in_default_config=in_default_config, label=t.spec.label,
           identities=[os.path.basename(p) for p in t.spec.identity_files], value=job.result(timeout=240),
           job_id=job.job_id)
finally:
    os.unlink(path)
'''.replace("ALIAS", alias))
    assert r["in_default_config"] is False
    cls, message = r["unknown"]
    assert cls == "HostUnreachableError"
    assert message.startswith(f"cannot reach {alias} at {alias}:22: unknown host name (")
    assert message.endswith(f"; check the host name, your network or VPN, and `ssh {alias} true`; a login node "
                            "behind a bastion needs [ssh] proxy_jump (or ProxyJump in ~/.ssh/config)")
    assert r["unknown_s"] < 10
    assert r["label"] == f"{alias} (alice@10.78.0.1:22)"
    assert r["identities"] == ["id_ed25519"]
    assert r["value"] == 512
    assert cluster.wait_job(r["job_id"], timeout=120).state == "COMPLETED"
    assert cluster.squeue_ids() - before == set()


def test_keepalive_s_key_sends_keepalives_on_an_idle_connection(cluster: LiveCluster) -> None:
    """``keepalive_s = 1``: an idle connection sends a keepalive about every second. Counted on the laptop with
    ``ss -ti`` (the kernel's count of data segments sent on the connection's socket): over 4 s of idle, a
    connection with ``keepalive_s = 1`` sends several, one with the default (30 s) none. Both keep working."""
    r = laptop(cluster, r'''
def segments_out(conn):
    out = subprocess.run(["ss", "-Htin", "state", "established", f"( sport = :{conn.local_port} )"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    found = re.findall(r"data_segs_out:(\d+)", out)
    assert len(found) == 1, out
    return int(found[0])

often = make_transport(site("testcluster-login", keepalive_s=1))
default = make_transport(site("testcluster-login"))
names = [often.run(["hostname"]).stdout.strip(), default.run(["hostname"]).stdout.strip()]
time.sleep(1.5)  # the last replies are in
first = [segments_out(often.conn), segments_out(default.conn)]
time.sleep(4)
second = [segments_out(often.conn), segments_out(default.conn)]
names += [often.run(["hostname"]).stdout.strip(), default.run(["hostname"]).stdout.strip()]
report(names=names, sent=[b - a for a, b in zip(first, second)],
       keepalive=[often.conn.spec.keepalive_s, default.conn.spec.keepalive_s])
''')
    assert r["keepalive"] == [1.0, 30.0]
    often, default = r["sent"]
    assert 3 <= often <= 6, r["sent"]
    assert default == 0, r["sent"]
    assert r["names"] == ["login"] * 4
