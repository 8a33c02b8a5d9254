import subprocess
import sys

import hpcbridge


def test_public_names_are_pinned():
    assert hpcbridge.__all__ == [
        "Executor", "Job", "JobState", "Resources", "Site", "attach", "environment", "errors",
        "init_torch_distributed", "load_site", "suggest", "__version__",
    ]
    for name in hpcbridge.__all__:
        assert getattr(hpcbridge, name) is not None


def _modules_after(statement):
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_import_hpcbridge_is_light():
    loaded = _modules_after("import hpcbridge")
    assert not {"cloudpickle", "jinja2", "sqlite3", "concurrent.futures", "hpcbridge.executor"} & loaded


def test_the_worker_imports_only_what_a_job_start_needs():
    loaded = _modules_after("import hpcbridge.worker")
    heavy = {"jinja2", "sqlite3", "hpcbridge.executor", "hpcbridge.poll", "hpcbridge.sites", "asyncio"}
    assert not heavy & loaded


def test_a_registry_a_newer_hpcbridge_extended_stays_writable(tmp_path):
    """A laptop may run an older and a newer hpcbridge against one ~/.hpcbridge: a column the newer one added (with
    a default) must not stop the older one from recording its jobs (attach would not find them)."""
    import sqlite3

    from hpcbridge.registry import Registry

    path = str(tmp_path / "registry.sqlite")
    reg = Registry(path)
    reg.jobs()  # creates the tables
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE submissions ADD COLUMN image TEXT DEFAULT ''")
        conn.execute("ALTER TABLE jobs ADD COLUMN attempts TEXT DEFAULT '[]'")
    Registry(path).record(tag="t" * 16, site="s", job_id="7", folder="/w/t", is_array=False, chunks=[1], ranks=1,
                          function="m.f", submit_time=1.0, task_ids=["7"])
    rows = Registry(path).find("s", "7")
    assert [(r["job_id"], r["folder"], r["image"]) for r in rows] == [("7", "/w/t", "")]
