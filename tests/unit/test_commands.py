"""What ``hpcbridge submit`` runs in the job: a command or a Python file; a non-zero exit is UserCommandError."""

from __future__ import annotations

import pickle
import subprocess
import sys

import cloudpickle
import pytest

from hpcbridge.commands import run_command, run_script
from hpcbridge.errors import HpcBridgeError, UserCommandError


def test_a_failing_command_raises_user_command_error_that_survives_the_trip_back():
    with pytest.raises(UserCommandError) as info:
        run_command(["sh", "-c", "exit 3"])
    assert str(info.value) == "sh -c exit 3 exited with status 3" and isinstance(info.value, HpcBridgeError)
    back = pickle.loads(cloudpickle.dumps(info.value))  # the worker pickles it, the client rebuilds it
    assert type(back) is UserCommandError
    assert (back.argv, back.returncode, str(back)) == (["sh", "-c", "exit 3"], 3, "sh -c exit 3 exited with status 3")


def test_a_command_that_cannot_run_is_status_127(capfd):
    with pytest.raises(UserCommandError) as info:
        run_command(["/nonexistent/hpcbridge-test-command"])
    assert info.value.returncode == 127
    assert "hpcbridge: cannot run '/nonexistent/hpcbridge-test-command'" in capfd.readouterr().err
    assert run_command(["true"]) == 0


def test_a_script_runs_as_main_and_its_exit_status_fails_the_job(tmp_path, capfd):
    path = str(tmp_path / "train.py")
    assert run_script(path, "import sys\nprint(__name__, sys.argv[1:])\n", ["--lr", "0.1"]) is None
    assert capfd.readouterr().out == "__main__ ['--lr', '0.1']\n"
    with pytest.raises(UserCommandError) as info:
        run_script(path, "import sys\nsys.exit(4)\n", ["a"])
    assert (info.value.argv, info.value.returncode) == ([path, "a"], 4)
    with pytest.raises(UserCommandError) as info:
        run_script(path, "import sys\nsys.exit('no data')\n", [])
    assert info.value.returncode == 1 and "no data" in capfd.readouterr().err
    assert run_script(path, "import sys\nsys.exit(0)\n", []) is None


def test_a_job_running_a_command_does_not_import_the_errors_until_one_fails():
    code = "import sys, hpcbridge.commands as c; c.run_command(['true']); print('hpcbridge.errors' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
