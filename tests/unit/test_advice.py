"""The advice's arithmetic (hpcbridge.advice), the waste report's sums (hpcbridge.waste) and the picture
(hpcbridge.usage_figure), on usage values built here."""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import time

import pytest
from usage_values import rank, usage

import hpcbridge
from hpcbridge import advice, display, usage_figure, waste
from hpcbridge.pickling import qualname
from hpcbridge.registry import Registry
from hpcbridge.state import JobState


def test_the_issues_examples_word_for_word():
    run = usage(cpus=4, mem_gb=4, walltime_s=3600, elapsed_s=130, cpu_time_s=1.02 * 130, peak_mem_gb=0.21)
    a = advice.advise([run], function="train")
    assert a.lines == [
        "peak 0.21 GB of 4 GB asked -> mem_gb=0.5 (peak x 1.5, rounded up)",
        "used 2:10 of 1:00:00 -> walltime 0:05:00 (longest run x 1.5, rounded up)",
        "1.02 of 4 CPUs busy -> cpus_per_task=1",
    ]
    assert a.resources() == {"mem_gb": 0.5, "walltime": "0:05:00", "cpus_per_task": 1}
    assert str(a).splitlines()[0] == "train (1 run): mem_gb=0.5, walltime=0:05:00, cpus_per_task=1"


def test_gpu_idle_note_and_fewer_gpus():
    run = usage(cpus=4, gpus=4, mem_gb=16, walltime_s=3600, elapsed_s=3000, cpu_time_s=3000 * 4,
                peak_mem_gb=15.0, gpu_utilization=0.17, gpu_mem_peak_gb=10.5)
    a = advice.advise([run])
    assert "GPU idle 83 % of the time; GPU memory peak 10.5 GB" in a.notes
    assert a.resources() == {"gpus_per_node": 1}  # 0.68 busy GPUs; memory, time and CPUs are used


@pytest.mark.parametrize("peak, asked, expected", [(0.21, 4, 0.5), (0.4, 8, 1.0), (3.1, 64, 5.0), (30.0, 256, 48.0)])
def test_memory_never_below_the_peak(peak: float, asked: float, expected: float):
    a = advice.advise([usage(mem_gb=asked, peak_mem_gb=peak)])
    assert a.resources()["mem_gb"] == expected
    assert expected >= peak * 1.5


def test_nothing_is_lowered_below_what_any_run_used():
    runs = [usage(mem_gb=8, peak_mem_gb=0.3, elapsed_s=100, walltime_s=7200, cpus=4, cpu_time_s=100),
            usage(mem_gb=8, peak_mem_gb=2.9, elapsed_s=3500, walltime_s=7200, cpus=4, cpu_time_s=3500 * 2.5)]
    a = advice.advise(runs)
    assert a.resources() == {"mem_gb": 5.0, "walltime": "1:30:00", "cpus_per_task": 3}  # 4.35 GB up to 5
    assert a.runs == 2


def test_ranks_on_one_node_add_up_and_the_busiest_rank_counts():
    run = usage(nodes=2, cpus=8, mem_gb=32, elapsed_s=100, cpu_time_s=150, walltime_s=None,
                ranks=(rank("n1", 0, cpu=100, rss=1.0), rank("n1", 1, cpu=20, rss=1.5),
                       rank("n2", 2, cpu=20, rss=0.5), rank("n2", 3, cpu=10, rss=0.5)))
    assert advice.node_peak_gb(run) == 2.5
    a = advice.advise([run])
    # asked: 32 GB over 2 nodes = 16 per node; 8 CPUs over 4 ranks = 2 per task; the busiest rank kept 1.0 busy
    assert a.lines == ["peak 2.5 GB of 16 GB asked -> mem_gb=4 (peak x 1.5, rounded up)",
                       "1.00 of 2 CPUs busy -> cpus_per_task=1"]


def test_out_of_memory_and_timeout_raise_the_request():
    a = advice.advise([usage(state="OUT_OF_MEMORY", mem_gb=2, peak_mem_gb=2.0),
                       usage(state="TIMEOUT", mem_gb=2, walltime_s=600, elapsed_s=600)])
    assert a.lines[:2] == ["ran out of memory with 2 GB -> mem_gb=4 (twice as much)",
                           "timed out at 0:10:00 -> walltime 0:20:00 (twice as long)"]


def test_no_figures_no_change_and_it_says_so():
    a = advice.advise([usage(peak_mem_gb=None, cpu_time_s=None)])
    assert a.changes == () or all(c.name == "walltime" for c in a.changes)
    assert "no memory figures: mem_gb kept" in a.notes and "no CPU time figures: cpus_per_task kept" in a.notes
    under_a_second = advice.advise([usage(elapsed_s=0.0, cpus=2, cpu_time_s=0.05, walltime_s=600, mem_gb=0.5)])
    assert under_a_second.resources() == {"walltime": "0:05:00"}  # no CPU figure from 0 s
    assert advice.advise([usage(elapsed_s=None)]).notes == ("no finished run with usage figures yet: nothing to go by",)
    assert advice.advise([]).summary() == "keep the request"


def test_an_executors_request_is_what_gets_changed():
    asked = advice.Asked(cpus_per_task=2, mem_gb=2.0, walltime_s=300)
    a = advice.advise([usage(cpus=2, mem_gb=2, walltime_s=300, elapsed_s=20, cpu_time_s=0.5, peak_mem_gb=0.05)],
                      asked)
    assert a.resources() == {"mem_gb": 0.5, "cpus_per_task": 1}  # 5 min is already the smallest walltime step


# -- the report ----------------------------------------------------------------------------------------------
def mixed():
    return [
        {"usage": usage(job_id="1", cpus=2, elapsed_s=3600, cpu_time_s=3600, mem_gb=4, peak_mem_gb=1,
                        walltime_s=7200), "function": "f"},
        {"usage": usage(job_id="2", state="FAILED", cpus=2, elapsed_s=1800, cpu_time_s=1800), "function": "f"},
        {"usage": usage(job_id="3", state="TIMEOUT", cpus=1, elapsed_s=600, cpu_time_s=600, walltime_s=600),
         "function": "g"},
        {"usage": usage(job_id="4", state="CANCELLED", cpus=4, gpus=1, elapsed_s=360, cpu_time_s=36,
                        gpu_utilization=0.25), "function": "g"},
    ]


def test_report_sums_every_job_whatever_its_end():
    report = waste.build(mixed())
    t = report.totals
    assert (t.jobs, t.completed, t.not_completed) == (4, 1, {"FAILED": 1, "TIMEOUT": 1, "CANCELLED": 1})
    assert t.core_hours_allocated == pytest.approx(2 + 1 + 1 / 6 + 0.4)
    assert t.core_hours_used == pytest.approx(1 + 0.5 + 1 / 6 + 0.01)
    assert t.core_hours_wasted == pytest.approx(1 + 0.5 + 0 + 0.39)
    assert t.core_hours_lost == pytest.approx(1 + 1 / 6 + 0.4)
    assert t.gpu_hours_allocated == pytest.approx(0.1) and t.gpu_hours_used == pytest.approx(0.025)
    row = report.rows[0]
    assert (row.cpu_efficiency, row.mem_efficiency, row.time_efficiency) == (0.5, 0.25, 0.5)
    data = report.as_json()
    assert [j["state"] for j in data["jobs"]] == ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"]
    assert data["total"]["core_hours_allocated"] == pytest.approx(sum(j["core_hours_allocated"] for j in data["jobs"]))


def test_report_table_and_advice_lines():
    entries = mixed()
    adv = {"f": advice.advise([e["usage"] for e in entries if e["function"] == "f"], function="f")}
    report = waste.build(entries, adv)
    rows = waste.table_rows(report)
    assert rows[0] == ["1", "f", "COMPLETED", "2", "1", "1", "0", "0", "50%", "25%", "50%", "-"]
    assert rows[-1][:6] == ["total (4)", "", "1 ok, 1 CANCELLED, 1 FAILED, 1 TIMEOUT", "3.57", "1.68", "1.89"]
    lines = waste.summary_lines(report)
    assert lines[0] == "1.89 of 3.57 core-hours allocated were idle (53%); 1.57 core-hours went to jobs that did " \
                       "not complete"
    assert lines[1].startswith("advice for f (2 runs): ")
    assert report.as_json()["jobs"][0]["advice"] == adv["f"].resources()


# -- the picture -----------------------------------------------------------------------------------------------
def test_svg_picture_has_a_bar_per_resource_and_job_with_the_used_part_to_scale():
    jobs = [("11", usage(cpus=2, elapsed_s=100, cpu_time_s=100, mem_gb=1, peak_mem_gb=0.25, walltime_s=400)),
            ("12", usage(cpus=2, elapsed_s=100, cpu_time_s=None, mem_gb=1, peak_mem_gb=None, walltime_s=None))]
    svg = usage_figure.usage_figure(jobs, prefer_matplotlib=False)
    assert svg.startswith('<svg class="hpcbridge-usage"')
    assert svg.count(f'fill="{usage_figure.ALLOCATED}"') == 6  # 2 jobs x CPU, memory, time (no GPU asked)
    used = re.findall(r'<rect x="\d+" y="\d+" width="([\d.]+)" height="14" fill="#', svg)
    used = [w for w in used if w != "160"]
    assert used == ["80.0", "40.0", "40.0"]  # CPU 50 %, memory 25 %, time 25 %; the second job has no figures
    for text in ("1.00 of 2 CPUs busy", "peak 0.25 of 1 GB", "1:40 of 6:40", "no CPU time figure",
                 "no memory figure", "no walltime"):
        assert f">{text}</text>" in svg


def test_matplotlib_picture_when_installed():
    plt = pytest.importorskip("matplotlib.pyplot")
    out = usage_figure.usage_figure([("11", usage())])
    assert out.startswith('<div class="hpcbridge-usage"><svg') and plt is not None


# -- hpcbridge report's arguments --------------------------------------------------------------------------------
def test_since_takes_spans_and_dates_and_refuses_the_rest():
    from hpcbridge.cli.output import CliError
    from hpcbridge.cli.usage_report import since_epoch

    assert since_epoch("7d", 1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert since_epoch("30m", 10_000.0) == 10_000.0 - 1800
    assert since_epoch("2026-12-01", 0.0) == datetime.datetime(2026, 12, 1).timestamp()
    with pytest.raises(CliError) as err:
        since_epoch("last week", 0.0)
    assert str(err.value) == "--since 'last week' is neither a span nor a date"
    assert err.value.hint == "give a span such as 30m, 12h, 7d or 2w, or a date such as 2026-12-01"


# -- the job tables ------------------------------------------------------------------------------------------------
class View:
    """A job as the table reads it."""

    def __init__(self, job_id: str, known: object = None) -> None:
        self.job_id, self.site, self.nodes, self.elapsed = job_id, "hpc", "node1", 12.0
        self.state = JobState.COMPLETED
        self._usage = known  # as hpcbridge.job.Job keeps it once gathered

    def done(self) -> bool:
        return True


def test_tables_gain_the_efficiency_columns_and_the_picture_once_usage_is_known(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # the plain SVG, whether matplotlib is here or not
    plain = display.jobs_html([View("7")])
    assert re.findall(r"<th[^>]*>([^<]+)</th>", plain) == ["state", "job id", "nodes", "elapsed"]
    assert "<svg" not in plain
    measured = display.jobs_html([View("7", usage(cpus=2, elapsed_s=100, cpu_time_s=50, mem_gb=1, peak_mem_gb=0.3,
                                                  walltime_s=1000)), View("8")])
    assert re.findall(r"<th[^>]*>([^<]+)</th>", measured) == ["state", "job id", "nodes", "elapsed", "CPU", "mem",
                                                              "time", "GPU"]
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", measured)]
    assert cells == ["COMPLETED", "7", "node1", "12.0s", "25%", "30%", "10%", "-",
                     "COMPLETED", "8", "node1", "12.0s", "", "", "", ""]
    assert measured.endswith("</svg>") and ">7</tspan>" in measured and ">8</tspan>" not in measured


def test_right_sized_says_what_it_changes_against_the_executors_request():
    from hpcbridge.right_size import right_sized
    from hpcbridge.spec import Resources

    res = Resources(cpus_per_task=2, mem_gb=1.5, walltime_s=1800)
    runs = [usage(cpus=2, mem_gb=1.5, walltime_s=1800, elapsed_s=14, cpu_time_s=0.4, peak_mem_gb=0.17)]
    advice, said = right_sized("hpc", res, "work", runs)
    assert advice.resources() == {"mem_gb": 0.5, "walltime": "0:05:00", "cpus_per_task": 1}
    assert said == ("hpcbridge: right_size: work on hpc, from 1 earlier run: peak 0.17 GB of 1.5 GB asked -> "
                    "mem_gb=0.5 (peak x 1.5, rounded up); used 0:14 of 0:30:00 -> walltime 0:05:00 (longest run x "
                    "1.5, rounded up); 0.03 of 2 CPUs busy -> cpus_per_task=1")
    assert right_sized("hpc", Resources(mem_gb=0.5, walltime_s=300), "work", runs)[1] == ""


# -- right_size and report from the registry -----------------------------------------------------------------------
def work(seconds: float) -> None:
    """The function whose history the registry holds."""


def _recorded(function: str, runs: list) -> Registry:
    """A registry holding finished jobs of ``function`` on site 'hpc', each with its stored usage."""
    registry = Registry()
    for i, u in enumerate(runs):
        registry.record(tag=f"tag{i}", site="hpc", job_id=u.job_id, folder=f"/w/tag{i}", is_array=False, chunks=[1],
                        ranks=1, function=function, submit_time=time.time() - 100 + i, task_ids=[u.job_id])
        registry.update_states("hpc", [(u.job_id, 0, u.state)])
        registry.store_usage("hpc", [(u.job_id, 0, u.to_json())])
    return registry


def test_right_size_applies_the_registrys_history_and_says_it_once(caplog: pytest.LogCaptureFixture):
    from hpcbridge.executor import Executor
    from hpcbridge.sites import site_from_mapping
    from hpcbridge.testing import ScriptedTransport

    _recorded(qualname(work), [usage(job_id="41", cpus=2, mem_gb=1.5, walltime_s=1800, elapsed_s=14, cpu_time_s=0.4,
                             peak_mem_gb=0.17)])
    site = site_from_mapping("hpc", {"scheduler": "slurm", "workdir": "/w", "right_size": True})
    ex = Executor(site, transport=ScriptedTransport(), cpus_per_task=2, mem_gb=1.5, walltime=30)
    assert ex.right_size
    with caplog.at_level(logging.INFO, logger="hpcbridge"):
        script = ex.render(work, 1)
        again = ex.render(work, 2)
    for directive in ("#SBATCH --cpus-per-task=1", "#SBATCH --mem=512M", "#SBATCH --time=00:05:00"):
        assert directive in script and directive in again, script
    said = [r.getMessage() for r in caplog.records if "right_size" in r.getMessage()]
    assert said == ["hpcbridge: right_size: test_advice.work on hpc, from 1 earlier run: peak 0.17 GB of 1.5 GB asked "
                    "-> mem_gb=0.5 (peak x 1.5, rounded up); used 0:14 of 0:30:00 -> walltime 0:05:00 (longest run x "
                    "1.5, rounded up); 0.03 of 2 CPUs busy -> cpus_per_task=1"]
    plain = Executor(site, transport=ScriptedTransport(), right_size=False, cpus_per_task=2, mem_gb=1.5, walltime=30)
    assert "#SBATCH --cpus-per-task=2" in plain.render(work, 1)
    # another function has no history: its request stands
    assert "#SBATCH --cpus-per-task=2" in ex.render(pow, 2, 3)
    assert hpcbridge.suggest(work).resources() == {"mem_gb": 0.5, "walltime": "0:05:00", "cpus_per_task": 1}


def test_report_json_from_the_registry(capsys: pytest.CaptureFixture[str]):
    from hpcbridge.cli import main

    _recorded("f", [e["usage"] for e in mixed()])
    assert main(["report", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [j["job_id"] for j in data["jobs"]] == ["4", "3", "2", "1"]  # newest first
    assert data["total"]["not_completed"] == {"CANCELLED": 1, "FAILED": 1, "TIMEOUT": 1}
    assert data["total"]["core_hours_allocated"] == pytest.approx(2 + 1 + 1 / 6 + 0.4)
    assert data["not_counted"] == {"running": 0, "no_usage": 0}
    assert main(["report", "--json", "3"]) == 0
    assert [j["job_id"] for j in json.loads(capsys.readouterr().out)["jobs"]] == ["3"]
    assert main(["report", "--since", "soon"]) == 2
    assert "hpcbridge: error: --since 'soon' is neither a span nor a date" in capsys.readouterr().err


def test_advice_shows_as_its_arithmetic():
    a = advice.advise([usage(mem_gb=4, peak_mem_gb=0.21, walltime_s=None, cpu_time_s=None)], function="f")
    assert repr(a) == str(a) == ("f (1 run): mem_gb=0.5\n  peak 0.21 GB of 4 GB asked -> mem_gb=0.5 (peak x 1.5, "
                                 "rounded up)\n  no CPU time figures: cpus_per_task kept")
    assert a._repr_html_().startswith('<div class="hpcbridge-advice"><b>f</b> (1 run): <code>mem_gb=0.5</code><ul>')
