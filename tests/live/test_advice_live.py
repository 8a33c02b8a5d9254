"""Issue 14's consumers on the live cluster: ``suggest`` on oversized jobs, ``right_size=True`` asking for what it
said (read back from slurmctld), ``hpcbridge report`` over jobs that ended every way, and the notebook example's
efficiency columns and picture in a real kernel.

The slow jobs (a completed, a failed, a timed-out and a cancelled one) are submitted together by one module
fixture and waited for together; the right-sized run goes while the timed-out job is still running.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List

import nbformat
import pytest
from nbclient import NotebookClient

import hpcbridge
from hpcbridge import Executor
from hpcbridge.advice import gb
from hpcbridge.state import JobState

if TYPE_CHECKING:
    from conftest import LiveCluster  # tests/live/conftest.py

REPO = Path(__file__).resolve().parents[2]
#: what the oversized job asks for: 2x the CPUs it uses (1), ~8x its memory peak, 10x+ its time
OVERSIZED = {"cpus_per_task": 2, "mem_gb": 1.5, "walltime": "0:30:00"}


def work(seconds: float, mb: int) -> int:
    """Touch ``mb`` MB, then wait: one CPU at most, a peak of ``mb`` + the interpreter."""
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(seconds)
    return len(block) // (1024 * 1024)


def fails() -> None:
    raise ValueError("this job fails on purpose")


def sleeps(seconds: float) -> None:
    time.sleep(seconds)


def _scontrol(job_id: str) -> Dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _sacct(ids: List[str]) -> Dict[str, Dict[str, str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o",
                          "JobID,State,AllocCPUS,ElapsedRaw,ReqMem,Timelimit"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows = {}
    for line in out.splitlines():
        job_id, state, cpus, elapsed, req_mem, limit = line.split("|")
        rows[job_id] = {"state": state.split()[0], "cpus": cpus, "elapsed": elapsed, "req_mem": req_mem,
                        "limit": limit}
    return rows


@pytest.fixture(scope="module")
def mixed(cluster: LiveCluster, tmp_path_factory: pytest.TempPathFactory,
          _cluster_session_dir: Path) -> Iterator[Dict[str, Any]]:
    """One oversized job that completes, one that fails, one that times out, one cancelled while it runs: all
    submitted at once, with one registry (``home``) for the module."""
    home = tmp_path_factory.mktemp("advice-home")
    folder = _cluster_session_dir / "advice"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPCBRIDGE_HOME", str(home))
        ex = Executor(site="testcluster", folder=str(folder), mem_gb=0.5, walltime=5)
        oversized = ex.with_resources(**OVERSIZED).submit(work, 12, 100)
        failed = ex.submit(fails)
        timed_out = ex.with_resources(walltime=1).submit(sleeps, 300)
        cancelled = ex.submit(sleeps, 300)
        deadline = time.monotonic() + 120
        while cancelled.state != JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cancelled.state == JobState.RUNNING, cancelled.state
        time.sleep(3)
        cancelled.cancel()
        assert oversized.result(timeout=180) == 100
        yield {"home": home, "folder": folder, "ex": ex, "oversized": oversized, "failed": failed,
               "timed_out": timed_out, "cancelled": cancelled}


def test_suggest_gives_smaller_requests_and_right_size_asks_for_them(
    mixed: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HPCBRIDGE_HOME", str(mixed["home"]))
    job = mixed["oversized"]
    usage = job.usage()
    advice = hpcbridge.suggest(job)
    assert advice.runs == 1 and advice.function == "test_advice_live.work"
    new = advice.resources()
    assert new["cpus_per_task"] == 1
    assert usage.peak_mem_gb * 1.5 <= new["mem_gb"] <= 0.5  # ~0.17 GB peak x 1.5, up to the next 0.5 GB
    assert new["walltime"] == "0:05:00"  # ~15 s x 1.5, up to 5 minutes
    assert advice.lines[0] == (f"peak {gb(usage.peak_mem_gb)} GB of 1.5 GB asked -> mem_gb={gb(new['mem_gb'])} "
                               "(peak x 1.5, rounded up)")
    assert re.fullmatch(r"used 0:\d\d of 0:30:00 -> walltime 0:05:00 \(longest run x 1.5, rounded up\)",
                        advice.lines[1]), advice.lines
    assert re.fullmatch(r"0\.\d\d of 2 CPUs busy -> cpus_per_task=1", advice.lines[2]), advice.lines
    assert hpcbridge.suggest(work).resources() == new  # the function's history in the registry: the same run

    # the second run: same oversized request, right_size=True reads the history and asks for the advice
    caplog.set_level(logging.INFO, logger="hpcbridge")
    ex = Executor(site="testcluster", folder=str(mixed["folder"]), right_size=True, **OVERSIZED)
    again = ex.submit(work, 5, 100)
    second = ex.submit(work, 1, 10)  # the same function: sized once, said once
    shown = _scontrol(again.job_id)
    assert shown["NumCPUs"] == "1" and shown["MinMemoryNode"] == f"{int(new['mem_gb'] * 1024)}M", shown
    assert shown["TimeLimit"] == "00:05:00", shown
    said = [r.getMessage() for r in caplog.records if "right_size" in r.getMessage()]
    assert said == ["hpcbridge: right_size: test_advice_live.work on testcluster, from 1 earlier run: "
                    + "; ".join(advice.lines[:3])]
    assert again.result(timeout=180) == 100 and second.result(timeout=180) == 10
    acct = _sacct([again.job_id])[again.job_id]
    assert (acct["state"], acct["cpus"], acct["limit"]) == ("COMPLETED", "1", "00:05:00"), acct


def test_report_json_sums_every_end_and_the_table_renders_on_a_terminal(
    mixed: Dict[str, Any], cluster: LiveCluster
) -> None:
    jobs = {name: mixed[name] for name in ("oversized", "failed", "timed_out", "cancelled")}
    assert not concurrent.futures.wait(list(jobs.values()), timeout=240).not_done
    ids = [job.job_id for job in jobs.values()]
    env = {**os.environ, "HPCBRIDGE_HOME": str(mixed["home"]), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "hpcbridge.cli", "report", *ids]
    p = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    by_id = {row["job_id"]: row for row in data["jobs"]}
    assert {i: by_id[i]["state"] for i in ids} == dict(zip(ids, ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"]))
    acct = _sacct(ids)
    for job_id in ids:  # allocated core-hours: sacct's AllocCPUS x ElapsedRaw, within the seconds they round to
        expected = int(acct[job_id]["cpus"]) * int(acct[job_id]["elapsed"]) / 3600
        assert by_id[job_id]["core_hours_allocated"] == pytest.approx(expected, abs=2 * 2 / 3600), job_id
    total = data["total"]
    assert total["jobs"] == 4 and total["completed"] == 1
    assert total["not_completed"] == {"FAILED": 1, "TIMEOUT": 1, "CANCELLED": 1}
    for key in ("core_hours_allocated", "core_hours_used", "core_hours_wasted", "gpu_hours_allocated"):
        assert total[key] == pytest.approx(sum(row[key] or 0 for row in data["jobs"])), key
    assert total["core_hours_lost"] == pytest.approx(sum(by_id[i]["core_hours_allocated"] for i in ids[1:]))
    for row in data["jobs"]:  # wasted: allocated - used, never below 0 (a 1 s job may show more CPU than seconds)
        assert row["core_hours_wasted"] == pytest.approx(max(0.0, row["core_hours_allocated"] - row["core_hours_used"]))
    assert data["advice"]["test_advice_live.work"]["resources"]["cpus_per_task"] == 1

    # the same report on a terminal: a table with a row per job, the total, the idle share and the advice
    import pty

    controller, terminal = pty.openpty()
    try:
        subprocess.run(argv, stdout=terminal, stderr=subprocess.PIPE, timeout=120, env={**env, "COLUMNS": "200"},
                       check=True)
    finally:
        os.close(terminal)
    text = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        text += chunk
    os.close(controller)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text.decode())
    assert re.search(r"job\s+function\s+state\s+core-h alloc", shown), shown
    for job_id, state in zip(ids, ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"]):
        assert re.search(rf"^\s*{job_id}\s+\S+\s+{state}\s", shown, re.M), shown
    assert re.search(r"^\s*total \(4\)\s+1 ok, 1 CANCELLED, 1 FAILED, 1 TIMEOUT\s", shown, re.M), shown
    assert re.search(r"core-hours allocated were idle \(\d+%\); [\d.]+ core-hours went to jobs that did not "
                     r"complete", shown), shown
    assert "advice for test_advice_live.work (1 run): " in shown and "cpus_per_task=1" in shown


def test_the_notebook_example_shows_the_efficiency_columns_and_the_picture(
    cluster: LiveCluster, cluster_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's set-up, its map_jobs cell and its usage section, executed in a real kernel."""
    monkeypatch.setenv("HPCBRIDGE_SITE", "testcluster")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(str(REPO / "examples" / "hpcbridge_in_jupyter.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    wanted = [c for c in code if c.source.startswith(("import os", "def square", "jobs = ex.map_jobs"))]
    usage_cells = [c for c in code if "usage()" in c.source or "suggest(" in c.source]
    assert len(wanted) == 3 and len(usage_cells) == 2, [c.source for c in usage_cells]
    nb.cells = wanted + usage_cells
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(cluster_workdir)}}).execute()
    (table,) = [o.data["text/html"] for o in usage_cells[0].outputs if o.output_type == "execute_result"]
    heads = re.findall(r"<th[^>]*>([^<]+)</th>", table)
    assert heads == ["state", "job id", "nodes", "elapsed", "CPU", "mem", "time", "GPU"], heads
    body = table.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)]
            for r in re.findall(r"<tr>(.*?)</tr>", body)]
    assert len(rows) == 6
    for row in rows:  # CPU: '-' for a job that ran under a second (sacct's ElapsedRaw is 0: no CPU efficiency)
        assert row[0] == "COMPLETED" and re.fullmatch(r"\d+%|-", row[4]), row
        assert all(re.fullmatch(r"\d+%", c) for c in row[5:7]) and row[7] == "-", row
    assert 'class="hpcbridge-usage"' in table and table.count("<rect") >= 6 * 3 * 2 - 6  # allocated + used bars
    (advice,) = [o.data for o in usage_cells[1].outputs if o.output_type == "execute_result"]
    assert 'class="hpcbridge-advice"' in advice["text/html"]
    assert re.search(r"walltime=0:05:00", advice["text/plain"]), advice
