"""The SSH transport against OpenSSH, on the same sshd (the live test cluster's login node), in one run.

Run on a test user's "laptop" (the client namespace, which reaches only the login node's sshd), with the
working tree on PYTHONPATH:

    tests/cluster/client env PYTHONPATH=$PWD /opt/hpcbridge-test/venv/bin/python benchmarks/bench_ssh.py
    # as alice: sudo -n /opt/hpcbridge-test/src/tests/cluster/client env PYTHONPATH=... python benchmarks/bench_ssh.py

Measures (targets from issue 5 in brackets):

1. median latency of one remote command (``true``): hpcbridge's open connection [<= 5 ms on loopback],
   a bare paramiko exec channel on that connection (no marker wrapper), OpenSSH through a ControlMaster socket,
   and a fresh ``ssh`` per command;
2. SSH round trips (exec channels) to stage and submit a 1000-call map [<= 5 for staging], and
   for ``write_files`` / ``read_files`` of 1000 small files; the jobs are submitted held (``--hold``) and cancelled
   at once, so nothing runs;
3. one poll tick's read of 6 new result files: median ms and round trips, read as before the result-file check
   (``read_files``) and as now (``read_with_owners``, with the owners and modes that decide whether they may be
   unpickled); the round trips to collect the results of a real 1000-call map (``map_jobs`` bundled into 6
   tasks of ~167 calls, one per CPU slot), from the submission to the last result, split into result-folder
   listings, result reads and status queries (they follow the wall time: one listing per poll tick, not one per
   call);
4. 64 MB upload and download vs ``scp`` [>= 80 %], scp both alone (with its handshake, as users run it) and through
   a ControlMaster (the transfer only): hpcbridge's ``upload`` and ``download`` (one exec channel streaming
   ``cat`` each way) and the tar streams of write_files/read_files; paramiko's SFTP ``putfo`` (pipelined) and
   ``getfo`` (prefetch) for reference.

Loopback on a shared 2-core machine is CPU-bound: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict

import paramiko

from hpcbridge import Executor, load_site
from hpcbridge.transport.ssh import SSHTransport, host_spec
from hpcbridge.transport.ssh import connection as ssh_transport

HOST = "testcluster-login"


def median_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def ssh(*args: str, control: str = "") -> None:
    opts = ["-o", f"ControlPath={control}", "-o", "ControlMaster=auto", "-o", "ControlPersist=120"] if control else []
    subprocess.run(["ssh", *opts, HOST, *args], check=True, capture_output=True, timeout=60)


def latency(t: SSHTransport, n: int) -> Dict[str, float]:
    t.run(["true"])  # connected
    out = {"hpcbridge (open connection)": median_ms(lambda: t.run(["true"]), n)}

    def bare() -> None:
        ch = t.conn.transport().open_session()
        ch.exec_command("true")
        ch.recv_exit_status()
        ch.close()

    out["paramiko exec channel, same connection, no wrapper"] = median_ms(bare, n)
    control = os.path.join(tempfile.mkdtemp(prefix="bench-ssh-"), "cm")
    ssh("true", control=control)  # starts the master
    out["OpenSSH ControlMaster"] = median_ms(lambda: ssh("true", control=control), n)
    subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", HOST], capture_output=True, timeout=30)
    out["OpenSSH, new connection per command"] = median_ms(lambda: ssh("true"), max(5, n // 5))
    return out


def round_trips(site_name: str, folder: str) -> Dict[str, int]:
    site = load_site(site_name)
    ex = Executor(site=site, folder=folder, walltime="00:01:00", extra_directives=["--hold"])
    ex._backend.poller.add = lambda sub: None  # type: ignore[method-assign]  # count the submission's trips only
    t = ex._backend.transport
    stats = t.stats  # type: ignore[attr-defined]
    out: Dict[str, int] = {}
    before = stats.round_trips
    first = ex.map_jobs(abs, [1])  # first submission: also the cluster-python check and the job root
    out["first submission (1 call): env check + root + stage + submit"] = stats.round_trips - before
    ids = [first[0].job_id]
    before = stats.round_trips
    group = ex.map_jobs(abs, range(1000))
    out["stage + submit 1000 calls (one array job)"] = stats.round_trips - before
    ids.append(group[0].job_id.split("_")[0])  # the whole array (a task id would cancel that task only)
    before = stats.round_trips
    t.run(["scancel", *ids])
    out["cancel (scancel)"] = stats.round_trips - before
    files = {f"{folder}/small/{i}.pkl": os.urandom(512) for i in range(1000)}
    t.makedirs(f"{folder}/small")
    before = stats.round_trips
    t.write_files(files)
    out["write_files: 1000 files of 512 B"] = stats.round_trips - before
    before = stats.round_trips
    back = t.read_files(list(files))
    out["read_files: 1000 files of 512 B"] = stats.round_trips - before
    assert back == files
    return out


def _square(x: int) -> int:
    return x * x


def collect_round_trips(site_name: str, folder: str, ncalls: int = 1000, chunksize: int = 167) -> Dict[str, float]:
    """Round trips from the submission of a real ``ncalls``-call map to its last result, by kind."""
    ex = Executor(site=load_site(site_name), folder=folder, walltime="00:05:00")
    backend = ex._backend
    t = backend.transport
    stats = t.stats  # type: ignore[attr-defined]
    ex.submit(abs, -1).result(timeout=300)  # connected, cluster python checked, job root made
    kinds = {"listdir": 0, "result reads": 0, "status query": 0}

    def counted(kind: str, fn: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kw: object) -> object:
            kinds[kind] += 1
            return fn(*args, **kw)

        return call

    t.listdir = counted("listdir", t.listdir)  # type: ignore[method-assign]
    t.read_files = counted("result reads", t.read_files)  # type: ignore[method-assign]
    t.read_with_owners = counted("result reads", t.read_with_owners)  # type: ignore[method-assign]
    backend.query_status = counted("status query", backend.query_status)  # type: ignore[method-assign]
    mark: Dict[str, int] = {}
    add = backend.poller.add

    def watched(sub: object) -> None:  # the submission is in: from here on every round trip is collection
        mark["submitted"] = stats.round_trips
        kinds.update(dict.fromkeys(kinds, 0))  # what the poller did before (the staging's own listings) is not
        add(sub)  # type: ignore[arg-type]

    backend.poller.add = watched  # type: ignore[method-assign]
    t0 = time.perf_counter()
    jobs = ex.map_jobs(_square, range(ncalls), chunksize=chunksize)
    values = [j.result(timeout=600) for j in jobs]
    wall = time.perf_counter() - t0
    assert values == [x * x for x in range(ncalls)]
    total = stats.round_trips - mark["submitted"]
    return {"calls": ncalls, "tasks": len({j.job_id for j in jobs}), "wall s": round(wall, 1),
            "round trips to collect all results": total, **kinds,
            "other (per-task commands)": total - sum(kinds.values())}


def tick_read(t: SSHTransport, folder: str, n: int, files: int = 6) -> Dict[str, float]:
    """What one poll tick's read of new result files costs (median ms, and round trips per read): ``files`` result
    files of ~1 KB of one submission, read as the poller did before the result-file check (``read_files``) and as
    it does now (``read_with_owners``: the same tar stream, plus the job folder's and ``res/``'s headers and
    ``id -u``)."""
    job = f"{folder}/0123456789abcdef"
    res = f"{job}/res"
    t.makedirs(job, res)
    paths = {f"{res}/{i}.0.pkl": os.urandom(1024) for i in range(files)}
    t.write_files(paths)
    stats = t.stats
    out: Dict[str, float] = {}
    for name, read in (("read_files (before)", lambda: t.read_files(list(paths))),
                       ("read_with_owners (now)", lambda: t.read_with_owners(list(paths), [job, res]))):
        before = stats.round_trips
        read()
        out[f"{name}: round trips"] = stats.round_trips - before
        out[f"{name}: median ms"] = round(median_ms(read, n), 2)
    assert t.read_with_owners(list(paths), [job, res]).files == paths
    return out


def throughput(t: SSHTransport, folder: str, size_mb: int, rounds: int) -> Dict[str, float]:
    local = tempfile.mkdtemp(prefix="bench-ssh-")
    src = os.path.join(local, "blob")
    dst = os.path.join(local, "back")
    with open(src, "wb") as fh:
        fh.write(os.urandom(size_mb << 20))
    with open(src, "rb") as fh:
        data = fh.read()
    remote = f"{folder}/blob"
    t.makedirs(folder)

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return size_mb / min(times)

    def scp(a: str, b: str, *opts: str) -> None:
        subprocess.run(["scp", "-q", *opts, a, b], check=True, timeout=600)

    control = os.path.join(tempfile.mkdtemp(prefix="bench-ssh-"), "cm")
    cm = ["-o", f"ControlPath={control}", "-o", "ControlMaster=auto", "-o", "ControlPersist=120"]
    ssh("true", control=control)  # scp through an open master: no handshake in the figure

    out = {
        "scp upload": best(lambda: scp(src, f"{HOST}:{remote}")),
        "scp (ControlMaster) upload": best(lambda: scp(src, f"{HOST}:{remote}", *cm)),
        "hpcbridge upload (exec channel stream)": best(lambda: t.upload(src, remote)),
        "hpcbridge write_files (tar stream)": best(lambda: t.write_files({remote: data})),
        "(paramiko SFTP putfo, pipelined)": best(lambda: sftp_put(t, src, remote)),
        "scp download": best(lambda: scp(f"{HOST}:{remote}", dst)),
        "scp (ControlMaster) download": best(lambda: scp(f"{HOST}:{remote}", dst, *cm)),
        "hpcbridge download (exec channel stream)": best(lambda: t.download(remote, dst)),
        "hpcbridge read_files (tar stream)": best(lambda: t.read_files([remote])),
        "(paramiko SFTP getfo, prefetch 64)": best(lambda: sftp_get(t, remote, dst)),
    }
    assert open(dst, "rb").read() == data
    subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", HOST], capture_output=True, timeout=30)
    return out


def _sftp(t: SSHTransport) -> paramiko.SFTPClient:
    """An SFTP client on the transport's own connection, as hpcbridge once used it (same window and packets)."""
    client = paramiko.SFTPClient.from_transport(t.conn.transport(), window_size=ssh_transport.WINDOW_BYTES,
                                                max_packet_size=ssh_transport.MAX_PACKET_BYTES)
    assert client is not None, "the server refused the SFTP subsystem"
    return client


def sftp_put(t: SSHTransport, local: str, remote: str) -> None:
    with _sftp(t) as sftp, open(local, "rb") as fh:
        sftp.putfo(fh, remote, confirm=False)


def sftp_get(t: SSHTransport, remote: str, local: str) -> None:
    with _sftp(t) as sftp, open(local, "wb") as fh:
        sftp.getfo(remote, fh, max_concurrent_prefetch_requests=64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--site", default="testcluster-ssh")
    ap.add_argument("-n", type=int, default=50, help="commands per latency measurement")
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="transfers per method (the best counts)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    site = load_site(args.site)
    t = SSHTransport(host_spec(site.ssh, site_name=site.name))
    folder = t.expanduser("~/.hpcbridge/bench-ssh")
    t.remove_tree(folder)
    t.makedirs(folder)
    try:
        lat = latency(t, args.n)
        trips = round_trips(args.site, folder)
        tick = tick_read(t, folder + "/tick", args.n)
        collect = collect_round_trips(args.site, folder + "/collect")
        thr = throughput(t, folder + "/big", args.size_mb, args.rounds)
    finally:
        t.remove_tree(folder)
    print(f"SSH transport benchmark: {t.spec.label}, paramiko connection shared by everything below\n")
    print("median latency of one remote command (`true`)")
    for k, v in lat.items():
        print(f"  {k:<55} {v:8.2f} ms")
    print("\nSSH round trips (exec channels)")
    for k, n in trips.items():
        print(f"  {k:<62} {n:4d}")
    print("\none poll tick's read of 6 new result files (1 KB each)")
    for k, v in tick.items():
        print(f"  {k:<62} {v:8}")
    print(f"\nround trips to collect the results of a real {collect['calls']}-call map "
          f"({collect['tasks']} bundled tasks, {collect['wall s']} s from submission to the last result)")
    for k, v in collect.items():
        if k not in ("calls", "tasks", "wall s"):
            print(f"  {k:<62} {v:4d}")
    cipher = t.conn.transport().local_cipher
    print(f"\n{args.size_mb} MB transfers (best of {args.rounds}; paramiko negotiated {cipher})")
    for k, v in thr.items():
        print(f"  {k:<45} {v:8.1f} MB/s")
    up, down = thr["hpcbridge upload (exec channel stream)"], thr["hpcbridge download (exec channel stream)"]
    for what, ours, tar in (("upload", up, thr["hpcbridge write_files (tar stream)"]),
                            ("download", down, thr["hpcbridge read_files (tar stream)"])):
        scp_new, scp_cm = thr[f"scp {what}"], thr[f"scp (ControlMaster) {what}"]
        print(f"  {what:<9} hpcbridge {ours / scp_new:.0%} of scp ({ours / scp_cm:.0%} of scp via ControlMaster); "
              f"tar stream {tar / scp_new:.0%} ({tar / scp_cm:.0%})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"latency_ms": lat, "round_trips": trips, "tick_read": tick, "collect": collect,
                       "throughput_mb_s": thr}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
