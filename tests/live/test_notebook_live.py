"""examples/*.ipynb executed in a real Jupyter kernel (nbclient + ipykernel) against the live test cluster.

The kernel runs with HPCBRIDGE_SITE=testcluster, so every job goes through Slurm; the checks read the executed
notebook's outputs as a person would see them: the results, the HTML job tables, the progress line.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
import pytest
from nbclient import NotebookClient

if TYPE_CHECKING:
    from conftest import LiveCluster  # tests/live/conftest.py


REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.ipynb"))


def _run(path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HPCBRIDGE_SITE", "testcluster")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def _outputs(nb: Any, source_start: str) -> list[Any]:
    """The outputs of the code cell whose source is ``source_start`` exactly, else starts with it (one cell)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    cells = [c for c in code if c.source == source_start] or [c for c in code if c.source.startswith(source_start)]
    assert len(cells) == 1, f"{len(cells)} cells match {source_start!r}"
    return list(cells[0].outputs)


def _result(nb: Any, source_start: str) -> dict[str, str]:
    (out,) = [o for o in _outputs(nb, source_start) if o.output_type == "execute_result"]
    return dict(out.data)


def _rows(table_html: str) -> list[list[str]]:
    body = table_html.split("<tbody>", 1)[1]
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", body):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        rows.append(cells)
    return rows


def test_there_is_an_example_notebook():
    assert [p.name for p in EXAMPLES] == ["hpcbridge_in_jupyter.ipynb"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_notebook_runs_on_the_cluster_and_shows_jobs_as_tables(
    path: Path, cluster: LiveCluster, cluster_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = _run(path, cluster_workdir, monkeypatch)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors

    assert _result(nb, "import os")["text/plain"] == "'testcluster'"

    # one job: its value, and the job id / node it printed
    assert _result(nb, "def square")["text/plain"] == "49"
    (printed,) = [o.text for o in _outputs(nb, "def square") if o.output_type == "stream"]
    m = re.fullmatch(r"job (\d+) ran on (node[123])\n", printed)
    assert m, printed
    job_id, host = m.groups()
    assert cluster.wait_job(job_id, timeout=120).state == "COMPLETED"

    # the job's HTML table: state, job id, nodes, elapsed
    shown = _result(nb, "job")
    assert shown["text/plain"] == f"<Job {job_id} COMPLETED site='testcluster'>"
    table = shown["text/html"]
    assert table.startswith('<table class="hpcbridge-jobs"') and "<th" in table
    assert re.findall(r"<th[^>]*>([^<]+)</th>", table) == ["state", "job id", "nodes", "elapsed"]
    ((state, shown_id, nodes, elapsed),) = _rows(table)
    assert (state, shown_id) == ("COMPLETED", job_id)
    assert host in nodes.split(",") or nodes == host
    assert re.fullmatch(r"\d+\.\ds|\d+m\d\ds", elapsed), elapsed

    # map_jobs: results in order, and a JobGroup table with one row per array task
    assert _result(nb, "jobs = ex.map_jobs")["text/plain"] == "[0, 1, 4, 9, 16, 25]"
    group = _result(nb, "jobs")
    assert group["text/plain"] == "<JobGroup of 6 jobs: 6 COMPLETED>"
    assert "6 jobs on testcluster: 6 COMPLETED" in group["text/html"]
    rows = _rows(group["text/html"])
    assert len(rows) == 6 and all(r[0] == "COMPLETED" for r in rows)
    array_ids = [r[1] for r in rows]
    base = array_ids[0].split("_")[0]
    assert array_ids == [f"{base}_{i}" for i in range(6)]
    assert all(re.fullmatch(r"node[123](,node[123])*", r[2]) for r in rows), rows
    assert cluster.wait_job(array_ids[5], timeout=120).state == "COMPLETED"

    # map: the progress line (updated in place, ends at 4/4) and the results
    outputs = _outputs(nb, "squares = ")
    (progress,) = [o for o in outputs if o.output_type == "display_data"]
    assert 'class="hpcbridge-progress"' in progress.data["text/html"]
    assert '<progress value="4" max="4"' in progress.data["text/html"]
    assert re.fullmatch(r"square: 4/4 done · 4 COMPLETED · .+", progress.data["text/plain"]), progress.data
    assert [o for o in outputs if o.output_type == "execute_result"][0].data["text/plain"] == "[0, 1, 4, 9]"

    # an exception from the job arrives as itself
    (caught,) = [o.text for o in _outputs(nb, "def fails") if o.output_type == "stream"]
    assert caught == "caught ValueError: raised on the cluster\n"
