"""The live display, redrawn by the poller's ticks (a Slurm site over ScriptedTransport: the poller, the status
parse and the drawing are real; the cluster's answers are recorded squeue/sacct output)."""

from __future__ import annotations

import time
import types

import pytest

from hpcbridge import Executor
from hpcbridge.here import Enclosing
from hpcbridge.live import job_line, live_html, live_text, usage_text, watch
from hpcbridge.sites import site_from_mapping
from hpcbridge.testing import ScriptedTransport, this_python

STATUS_PROGRAMS = ("squeue", "sacct", "scontrol")


def square(x):
    return x * x


@pytest.fixture
def scripted():
    site = site_from_mapping("rec", {"scheduler": "slurm", "workdir": "/w", "accounting": True,
                                     "poll_interval_min_s": 0.2})
    t = ScriptedTransport(answers={
        site.python: this_python(),
        "sbatch": (0, "4242\n", ""),
        "squeue": (0, "4242|PENDING|BeginTime||2026-12-06T13:26:10\n", ""),
        "sacct": (0, "4242|PENDING|0:0|None assigned\n", ""),
    })
    return Executor(site=site, transport=t), t


def _until(predicate, timeout=15.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_a_waiting_job_shows_its_reason_and_estimate_then_its_end_with_no_query_of_its_own(scripted):
    ex, t = scripted
    job = ex.submit(square, 3)
    d = watch(job, publish=False)
    assert d.drawn == ["job on rec\n4242 PENDING"]  # nothing asked yet
    _until(lambda: job.start_estimate)
    assert (job.queue_reason, job.start_estimate) == ("BeginTime", "2026-12-06T13:26:10")
    _until(lambda: len(d.drawn) == 2)
    assert d.drawn[1] == "job on rec\n4242 PENDING (BeginTime, est. start 2026-12-06T13:26:10)"
    t.complete(job, 9)
    assert job.result(timeout=15) == 9
    assert d.wait(timeout=15)
    assert d.drawn[-1] == "job on rec\n4242 COMPLETED on node1"  # the host that wrote the result
    assert str(d).startswith("job on rec\n4242 COMPLETED on node1 ")  # and its elapsed time
    status_commands = [c for c in t.calls if c[0] in STATUS_PROGRAMS]
    assert len(status_commands) == d.poller_queries() >= 1
    assert status_commands[0][0] == "squeue"  # the waiting query: it carries the reason and the estimate


def test_the_stdout_tail_is_read_on_demand(scripted):
    ex, t = scripted
    job = ex.submit(square, 4)
    d = watch(job, publish=False)
    t.files[f"{job.folder}/log/0.out"] = b"".join(f"line {i}\n".encode() for i in range(50))
    tail = d.tail(lines=3)
    assert str(tail) == "line 47\nline 48\nline 49"
    assert "<pre>line 47\nline 48\nline 49</pre>" in tail._repr_html_()
    t.complete(job, 16)
    assert d.wait(timeout=15)


def test_the_rendering_says_where_the_kernel_runs_and_shows_usage_once_known(scripted):
    ex, t = scripted
    job = ex.submit(square, 5)
    t.complete(job, 25)
    job.result(timeout=15)
    here = Enclosing("slurm", "8227", "node2", left_s=2470.0, measured_at=time.monotonic() + 0.5)
    text = live_text([job], here)
    assert text.splitlines()[:2] == ["job on rec", "this kernel runs inside Slurm job 8227 on node2, 0:41:10 left"]
    markup = live_html([job], here)
    assert '<div class="hpcbridge-here">this kernel runs inside Slurm job 8227 on node2, 0:41:10 left</div>' in markup
    assert "<th" in markup and ">usage<" not in markup
    job._usage = types.SimpleNamespace(cpu_efficiency=0.48, mem_efficiency=0.123, time_efficiency=None)
    assert usage_text(job._usage) == "CPU 48% · mem 12%"
    assert job_line(job).endswith(" · usage CPU 48% · mem 12%")
    assert ">usage<" in live_html([job], None) and "CPU 48% · mem 12%" in live_html([job], None)


def test_a_group_is_one_display_with_a_row_per_job(scripted):
    ex, t = scripted
    t.answers["squeue"] = (0, "4242_[0-2]|PENDING|Priority||2026-12-06T15:00:00\n", "")
    jobs = ex.map_jobs(square, [1, 2, 3])
    d = watch(jobs, publish=False)
    _until(lambda: all(j.queue_reason for j in jobs))
    _until(lambda: len(d.drawn) == 2)
    assert d.drawn[1].splitlines() == ["3 jobs on rec: 3 PENDING"] + [
        f"4242_{i} PENDING (Priority, est. start 2026-12-06T15:00:00)" for i in range(3)]
    markup = live_html(jobs, None)
    assert "<th" in markup and markup.count("<tr><td") == 3 and markup.count("Priority, est. start") == 3
    for i, job in enumerate(jobs):
        t.complete(job, i)
    assert jobs.results(timeout=15) == [0, 1, 2]
    assert d.wait(timeout=15)
    assert d.drawn[-1].splitlines()[0] == "3 jobs on rec: 3 COMPLETED"
