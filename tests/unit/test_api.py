import subprocess
import sys

import hpcbridge


def test_public_names_are_pinned():
    assert hpcbridge.__all__ == [
        "Executor", "Job", "JobState", "Resources", "Site", "attach", "environment", "errors",
        "init_torch_distributed", "load_site", "__version__",
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
