"""How jobs look: the HTML tables of Job and JobGroup, and map's progress on a terminal (local site, real jobs)."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from hpcbridge import Executor, JobState
from hpcbridge.display import Progress, TerminalProgress, format_elapsed, jobs_html, progress_for
from hpcbridge.group import JobGroup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def square(x):
    return x * x


def cells(table_html):
    body = table_html.split("<tbody>", 1)[1]
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body)
    ]


@pytest.fixture
def ex(tmp_path):
    return Executor(site="local", folder=str(tmp_path / "jobs"))


def test_a_job_is_a_one_row_table_with_state_id_nodes_and_elapsed(ex):
    job = ex.submit(square, 3)
    pending = cells(job._repr_html_())
    assert pending[0][0] in ("PENDING", "RUNNING") and pending[0][1] == job.job_id
    assert job.result(timeout=60) == 9
    table = job._repr_html_()
    assert re.findall(r"<th[^>]*>([^<]+)</th>", table) == ["state", "job id", "nodes", "elapsed"]
    ((state, job_id, nodes, elapsed),) = cells(table)
    assert (state, job_id, nodes) == ("COMPLETED", job.job_id, socket.gethostname())
    assert re.fullmatch(r"\d+\.\ds", elapsed) and job.elapsed is not None and job.elapsed < 60
    frozen = job.elapsed
    assert job.elapsed == frozen  # elapsed stops when the job finished


def test_map_jobs_returns_a_job_group_that_waits_cancels_and_displays(ex):
    jobs = ex.map_jobs(square, range(5))
    assert isinstance(jobs, JobGroup) and len(jobs) == 5 and isinstance(jobs[1:3], JobGroup)
    assert jobs.results(timeout=60) == [0, 1, 4, 9, 16]
    assert jobs.states() == {"COMPLETED": 5}
    assert repr(jobs) == "<JobGroup of 5 jobs: 5 COMPLETED>"
    table = jobs._repr_html_()
    assert "5 jobs on local: 5 COMPLETED" in table
    assert [r[1] for r in cells(table)] == [j.job_id for j in jobs]
    assert jobs.cancel() == 0  # nothing left to cancel
    short = cells(jobs_html(jobs, max_rows=2))
    assert len(short) == 3 and short[-1] == ["... 3 more"]


def test_cancelling_a_group_cancels_its_jobs(ex):
    import time

    jobs = ex.map_jobs(time.sleep, [60, 60])
    assert jobs.cancel() == 2
    assert jobs.wait(timeout=10) and jobs.states() == {"CANCELLED": 2}
    assert all(j.state == JobState.CANCELLED for j in jobs)


def test_format_elapsed():
    assert [format_elapsed(s) for s in (None, 4.24, 65, 7380)] == ["", "4.2s", "1m05s", "2h03m"]


class _Stream(io.StringIO):
    """A stand-in stderr that says whether it is a terminal (independent of pytest's capture and of -s)."""

    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_no_progress_display_when_nobody_watches(ex, monkeypatch):
    monkeypatch.delenv("HPCBRIDGE_PROGRESS", raising=False)
    jobs = [ex.submit(square, 2)]
    assert jobs[0].result(timeout=60) == 4
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    assert type(progress_for(jobs, "x")) is Progress  # stderr piped: waiting only, nothing drawn
    assert sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    shown = progress_for(jobs, "x")  # the same jobs with a terminal on stderr: a bar
    assert type(shown) is TerminalProgress
    shown.close()
    assert "1/1" in sys.stderr.getvalue()
    monkeypatch.setenv("HPCBRIDGE_PROGRESS", "0")
    assert type(progress_for(jobs, "x")) is Progress  # turned off on a terminal


SCRIPT = textwrap.dedent("""\
    import sys
    from hpcbridge import Executor

    def square(x):
        return x * x

    ex = Executor(site="local", folder=sys.argv[1])
    print("RESULT", list(ex.map(square, range(3))), file=sys.stderr)
""")


def _under_terminal(on_pty, tmp_path, env_extra):
    script = tmp_path / "mapper.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": REPO, "COLUMNS": "120", **env_extra}
    p, text = on_pty([sys.executable, str(script), str(tmp_path / "jobs")], which="stderr", stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, env=env, timeout=120)
    assert p.returncode == 0
    return text


def test_map_shows_a_progress_bar_on_a_terminal(tmp_path, on_pty):
    text = _under_terminal(on_pty, tmp_path, {})
    assert "RESULT [0, 1, 4]" in text
    assert re.search(r"square .*3/3 .*3 COMPLETED", text), text


def test_progress_is_off_when_piped_or_turned_off(tmp_path, on_pty):
    text = _under_terminal(on_pty, tmp_path, {"HPCBRIDGE_PROGRESS": "0"})
    assert "3/3" not in text and "RESULT [0, 1, 4]" in text
    script = tmp_path / "mapper.py"
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "jobs2")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert p.stderr == "RESULT [0, 1, 4]\n"
