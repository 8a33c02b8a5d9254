"""The pure parts of usage gathering: sacct / scontrol / qstat figures, the GPU sample summary, the registry's
usage table on an older registry file."""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, List

import pytest

from hpcbridge.registry import Registry
from hpcbridge.sampler import GpuStats, summarize_gpu, visible_devices
from hpcbridge.schedulers.base import ClusterFacts
from hpcbridge.schedulers.pbs.qstat import parse_qstat_text, resources_used
from hpcbridge.schedulers.slurm import SlurmScheduler
from hpcbridge.schedulers.slurm_usage import KILLED_NOTE, req_mem_gb, seconds, size_bytes
from hpcbridge.transport.base import Completed

GIB = 2**30


def out(stdout: str, rc: int = 0, stderr: str = "") -> Completed:
    return Completed(["x"], rc, stdout, stderr)


# recorded on the test cluster (Slurm 22.05, jobacct_gather/linux), format slurm_usage.USAGE_FIELDS; the array
# task and the srun step are edited in from the same cluster's records
SACCT = """\
8199|COMPLETED|2|1|21|00:20.512|billing=2,cpu=2,mem=1G,node=1|512M|00:05:00|2026-12-06T12:45:13|2026-12-06T12:45:15|2026-12-06T12:45:36||||
8199.batch|COMPLETED|2|1|21|00:20.512|cpu=2,mem=1G,node=1||||2026-12-06T12:45:15|2026-12-06T12:45:36|340M|cpu=00:00:20,energy=0,fs/disk=11083,mem=340M,pages=0,vmem=5512K|cpu=00:00:20,energy=0,fs/disk=11083,mem=340M,pages=0,vmem=5512K
8200_3|TIMEOUT|1|1|61|01:00:00|billing=1,cpu=1,mem=256M,node=1|256M|00:01:00|2026-12-06T12:45:13|2026-12-06T12:46:13|2026-12-06T12:47:14||||
8200_3.batch|CANCELLED|1|1|61|01:00:00|cpu=1,mem=256M,node=1||||2026-12-06T12:46:13|2026-12-06T12:47:14|4800K|mem=4800K|mem=4800K
8201|COMPLETED|6|3|5|00:12.000|billing=6,cpu=6,mem=3G,node=3,gres/gpu=3|1000Mn|UNLIMITED|2026-12-06T12:45:13|2026-12-06T12:45:13|2026-12-06T12:45:18||||
8201.batch|COMPLETED|2|1|5|00:00.100|cpu=2,mem=1G,node=1||||2026-12-06T12:45:13|2026-12-06T12:45:18|10M|mem=10M|mem=10M
8201.0|COMPLETED|6|3|4|00:11.900|cpu=6,mem=3G,node=3||||2026-12-06T12:45:14|2026-12-06T12:45:18|200M|mem=900M,gres/gpuutil=150|mem=200M,gres/gpumem=2G
8202|PENDING|1|1|0|00:00:00||1Gn|00:05:00|2026-12-06T12:45:13|Unknown|Unknown||||
8203|CANCELLED by 1000|0|1|0|00:00:00||500Mc|00:05:00|2026-12-06T12:45:13|None|2026-12-06T12:45:20||||
"""


@pytest.fixture
def slurm() -> SlurmScheduler:
    return SlurmScheduler()


def test_sacct_figures(slurm: SlurmScheduler) -> None:
    got = slurm.parse_usage(out(SACCT), ClusterFacts(accounting=True))
    m, complete = got["8199"]
    assert complete and m.source == "accounting" and m.state == "COMPLETED"
    f = m.figures
    assert (f["cpus"], f["nodes"], f["mem_gb"], f["walltime_s"], f["gpus"]) == (2, 1, 1.0, 300.0, 0)
    assert f["elapsed_s"] == 21.0 and f["queue_wait_s"] == 2.0
    assert f["cpu_time_s"] == pytest.approx(20.512)
    assert f["peak_mem_gb"] == pytest.approx(340 / 1024)  # from the batch step: the job line has none
    assert m.notes == ()


def test_sacct_array_task_killed_says_cpu_time_may_miss_children(slurm: SlurmScheduler) -> None:
    m, complete = slurm.parse_usage(out(SACCT), ClusterFacts())["8200_3"]
    assert complete and m.state == "TIMEOUT"
    assert m.figures["cpu_time_s"] == 3600.0  # HH:MM:SS when it is long
    assert m.notes == (KILLED_NOTE.format(state="TIMEOUT"),)


def test_sacct_multi_node_step_and_gpu_tres(slurm: SlurmScheduler) -> None:
    f = slurm.parse_usage(out(SACCT), ClusterFacts())["8201"][0].figures
    assert (f["nodes"], f["cpus"], f["gpus"]) == (3, 6, 3)
    assert "walltime_s" not in f  # UNLIMITED
    assert f["peak_mem_gb"] == pytest.approx(300 / 1024)  # the step's total 900M over its 3 nodes > MaxRSS 200M
    assert f["gpu_utilization"] == pytest.approx(0.5)  # gpuutil is a sum of per-GPU percentages: 150 / 3 GPUs
    assert f["gpu_mem_peak_gb"] == pytest.approx(2.0)


def test_sacct_pending_is_not_complete_and_never_started_has_no_times(slurm: SlurmScheduler) -> None:
    got = slurm.parse_usage(out(SACCT), ClusterFacts())
    m, complete = got["8202"]
    assert not complete and "elapsed_s" not in m.figures and m.figures["mem_gb"] == 1.0  # ReqMem 1Gn
    m, complete = got["8203"]
    assert complete and m.state == "CANCELLED"
    assert "cpu_time_s" not in m.figures and "elapsed_s" not in m.figures and "queue_wait_s" not in m.figures
    assert "cpus" not in m.figures and m.notes == ()


def test_sacct_failure_is_no_news(slurm: SlurmScheduler) -> None:
    assert slurm.parse_usage(out("", 1, "slurm_load_jobs error"), ClusterFacts()) == {}


def test_req_mem_both_formats() -> None:
    assert req_mem_gb("1000Mn", nodes=2, cpus=4) == pytest.approx(2000 / 1024)  # per node, before 21.08
    assert req_mem_gb("500Mc", nodes=2, cpus=4) == pytest.approx(2000 / 1024)  # per CPU, before 21.08
    assert req_mem_gb("4G", nodes=2, cpus=4) == 4.0  # 21.08 and later: the job's
    assert req_mem_gb("", 1, 1) is None


def test_times_and_sizes() -> None:
    assert seconds("00:20.512") == pytest.approx(20.512)
    assert seconds("1-02:03:04") == 93784
    assert seconds("02:03:04") == 7384
    assert seconds("UNLIMITED") is None and seconds("Partition_Limit") is None
    assert seconds("30") == 1800  # a Timelimit in minutes
    assert size_bytes("4800K") == 4800 * 1024 and size_bytes("1.5G") == 1.5 * GIB and size_bytes("") is None


def test_usage_argv_follows_accounting(slurm: SlurmScheduler) -> None:
    argv = slurm.usage_argv(["8199", "8200"], 1000.0, 1100.0, ClusterFacts(accounting=True))
    assert argv is not None and argv[0] == "sacct" and "--jobs=8199,8200" in argv and "--allocations" not in argv
    assert slurm.usage_argv(["8199"], 0, 0, ClusterFacts(accounting=False)) == [
        "scontrol", "--oneliner", "show", "job"]


SCONTROL = (
    "JobId=8210 JobName=burn UserId=alice(1000) JobState=COMPLETED Reason=None RunTime=00:00:12 "
    "TimeLimit=00:05:00 SubmitTime=2026-12-06T13:00:00 StartTime=2026-12-06T13:00:03 EndTime=2026-12-06T13:00:15 "
    "NumNodes=1 NumCPUs=2 TRES=cpu=2,mem=256M,node=1,billing=2\n"
    "JobId=8212 ArrayJobId=8211 ArrayTaskId=1 JobState=RUNNING RunTime=00:00:02 TimeLimit=00:10:00 "
    "SubmitTime=2026-12-06T13:00:00 StartTime=2026-12-06T13:00:01 NumNodes=1 NumCPUs=1 TRES=cpu=1,mem=1G,node=1\n"
)


def test_scontrol_figures(slurm: SlurmScheduler) -> None:
    got = slurm.parse_usage(out(SCONTROL), ClusterFacts(accounting=False))
    m, complete = got["8210"]
    assert complete and m.source == "scontrol"
    assert m.figures == {"nodes": 1, "cpus": 2, "mem_gb": 0.25, "walltime_s": 300.0, "gpus": 0, "elapsed_s": 12.0,
                         "queue_wait_s": 3.0}
    m, complete = got["8211_1"]
    assert not complete and m.figures["mem_gb"] == 1.0


QSTAT = """\
Job Id: 77.server
    Job_Name = burn
    job_state = C
    resources_used.cput = 00:01:05
    resources_used.mem = 307200kb
    resources_used.walltime = 00:02:10
    Resource_List.ncpus = 2
    Resource_List.nodect = 1
    Resource_List.walltime = 00:10:00
    Resource_List.mem = 1gb
Job Id: 78.server
    Job_Name = other
    job_state = C
"""


def test_pbs_resources_used() -> None:
    recs = parse_qstat_text(QSTAT)
    m = resources_used(recs["77.server"], "COMPLETED")
    assert m.source == "pbs"
    assert m.figures == {"cpu_time_s": 65.0, "peak_mem_gb": pytest.approx(300 / 1024), "elapsed_s": 130.0,
                         "walltime_s": 600.0, "cpus": 2, "nodes": 1, "mem_gb": 1.0}
    assert resources_used(recs["78.server"]).figures == {}  # the wrappers show none: the sampler's figures serve


# -- the GPU samples, as NVML gives them: (device, utilisation %, memory used) every 5 s ------------------------
RECORDED: List[Any] = [(0, u, m * GIB) for u, m in [(0, 1), (0, 1), (95, 30), (97, 31), (100, 31), (0, 31),
                                                      (90, 31), (98, 31), (99, 31), (0, 2)]]
RECORDED += [(1, 0, 0.5 * GIB)] * 10  # a second GPU that the job never used


def test_gpu_summary_of_recorded_samples() -> None:
    s = summarize_gpu(RECORDED)
    assert s is not None
    assert s["samples"] == 20 and s["devices"] == 2
    assert s["utilization_mean"] == pytest.approx((95 + 97 + 100 + 90 + 98 + 99) / 20 / 100)
    assert s["idle_fraction"] == pytest.approx(14 / 20)
    assert s["utilization_p50"] == 0.0
    assert s["utilization_p95"] == pytest.approx(0.99)  # the 19th of 20 samples, sorted
    assert s["mem_peak_bytes"] == 31 * GIB
    assert summarize_gpu([]) is None
    stats = GpuStats()
    stats.add(0, 250, 1, 16 * GIB)  # out-of-range readings are clamped
    assert stats.summary()["utilization_mean"] == 1.0 and stats.summary()["mem_total_bytes"] == 16 * GIB


def test_visible_devices() -> None:
    assert visible_devices(4, None) == [0, 1, 2, 3]
    assert visible_devices(4, "1,3") == [1, 3]
    assert visible_devices(4, "") == []
    assert visible_devices(2, "GPU-5a1e") == [0, 1]


# -- the registry: an older file gains the usage table -----------------------------------------------------
OLD_SCHEMA = """
CREATE TABLE submissions (tag TEXT PRIMARY KEY, site TEXT NOT NULL, job_id TEXT NOT NULL, folder TEXT NOT NULL,
    is_array INTEGER NOT NULL, chunks TEXT NOT NULL, ranks INTEGER NOT NULL, function TEXT NOT NULL,
    submit_time REAL NOT NULL);
CREATE TABLE jobs (site TEXT NOT NULL, job_id TEXT NOT NULL, position INTEGER NOT NULL, tag TEXT NOT NULL,
    task INTEGER NOT NULL, last_state TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (site, job_id, position));
INSERT INTO submissions VALUES ('t1', 'hpc', '42', '/w/t1', 0, '[1]', 1, 'mod.fn', 1000.0);
INSERT INTO jobs VALUES ('hpc', '42', 0, 't1', 0, 'COMPLETED', 1001.0);
"""


def test_an_older_registry_gains_the_usage_table(tmp_path: Any) -> None:
    path = str(tmp_path / "registry.sqlite")
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.close()
    reg = Registry(path)
    assert reg.usage("hpc", "42") is None
    reg.store_usage("hpc", [("42", 0, '{"job_id": "42"}')])
    assert reg.usage("hpc", "42") == '{"job_id": "42"}'
    rows: List[Dict[str, Any]] = reg.usages("hpc")
    assert [(r["job_id"], r["function"], r["usage"]) for r in rows] == [("42", "mod.fn", '{"job_id": "42"}')]
    assert reg.find("hpc", "42")[0]["last_state"] == "COMPLETED"  # the old rows are untouched


# -- the gatherer: one batched usage command per tick for the jobs that newly finished ------------------------
def test_finished_jobs_get_their_usage_from_one_sacct_and_their_sampler_summaries(tmp_path: Any) -> None:
    import json as _json

    from hpcbridge import Executor
    from hpcbridge.sites import site_from_mapping
    from hpcbridge.store import JobFolder
    from hpcbridge.testing import ScriptedTransport, this_python

    def sacct(argv: List[str]) -> Any:
        if any(a.startswith("--format=JobID,State,ExitCode") for a in argv):  # the status query
            return (0, "".join(f"{i}|COMPLETED|0:0|node1\n" for i in ("501", "502")), "")
        return (0, "\n".join(line.replace("8199", jid) for jid in ("501", "502")
                             for line in SACCT.splitlines()[:2]) + "\n", "")

    ids = iter(["501", "502"])
    t = ScriptedTransport(answers={"/usr/bin/python3": this_python(), "sbatch": lambda argv: (0, next(ids) + "\n", ""),
                                   "sacct": sacct})
    site = site_from_mapping("demo", {"scheduler": "slurm", "workdir": "/w", "python": "/usr/bin/python3",
                                      "poll_interval_min_s": 0.05})
    ex = Executor(site=site, transport=t, cpus_per_task=2, mem_gb=1)
    a, b = ex.submit(abs, -1), ex.submit(abs, -2)
    for job in (a, b):
        summary = {"node": "node1", "rank": 0, "cpu_time_s": 20.0, "peak_rss_bytes": 0.25 * GIB,
                   "started": 1.0, "finished": 21.0, "notes": ["no GPU data (NVML not available)"]}
        t.files[JobFolder(job.folder).usage(0, 0)] = _json.dumps(summary).encode()
        t.complete(job, 1)
    assert a.result(timeout=10) == 1 and b.result(timeout=10) == 1
    u = a.usage(timeout=10)
    assert (u.cpus, u.mem_gb, u.cpu_time_s, u.elapsed_s) == (2, 1.0, pytest.approx(20.512), 21.0)
    assert u.sources["cpu_time_s"] == "accounting" and u.sources["peak_mem_gb"] == "accounting"
    assert u.ranks[0].cpu_time_s == 20.0 and u.notes == ("no GPU data (NVML not available)",)
    from hpcbridge.group import JobGroup

    assert JobGroup([a, b]).usage(timeout=10).cpu_time_s == pytest.approx(2 * 20.512)
    usage_queries = [c for c in t.calls if c[0] == "sacct" and any("TotalCPU" in x for x in c)]
    # each asks for the finished jobs only, and its answer was complete: no job was asked about twice
    assert 1 <= len(usage_queries) <= 2
    assert sorted(x for c in usage_queries for x in c[-1][len("--jobs="):].split(",")) == ["501", "502"]
    stored = Registry().usage("demo", "501")
    assert stored is not None and _json.loads(stored)["cpu_time_s"] == pytest.approx(20.512)
