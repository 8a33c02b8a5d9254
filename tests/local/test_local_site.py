"""The built-in ``local`` site: real worker processes under hpcbridge's tiny local batch system."""

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from hpcbridge import Executor, JobState, attach
from hpcbridge.errors import HpcBridgeError, RemoteError, ResourceError, SerializationError, UnknownSiteError


@pytest.fixture
def ex(tmp_path):
    return Executor(site="local", folder=str(tmp_path / "jobs"))


def square(x):
    return x * x


def fail(x):
    raise KeyError(f"no such key {x}")


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("nope")


def fail_unpicklable():
    raise Unpicklable("odd")


def talk():
    print("to stdout")
    print("to stderr", file=sys.stderr)
    return os.getpid()


def test_submit_returns_a_future_with_the_result(ex):
    job = ex.submit(square, 12)
    assert isinstance(job, concurrent.futures.Future)
    assert job.result(timeout=60) == 144
    assert job.state == JobState.COMPLETED and job.done() and not job.running()
    assert job.script.startswith("#!/bin/bash\n") and "hpcbridge.worker" in job.script


def test_remote_exception_is_reraised_with_its_type_and_traceback(ex):
    job = ex.submit(fail, 7)
    with pytest.raises(KeyError, match="no such key 7") as info:
        job.result(timeout=60)
    cause = info.value.__cause__
    assert cause is not None and "Remote traceback (job" in str(cause) and "in fail" in str(cause)
    assert "in fail" in info.value.remote_traceback and "KeyError: 'no such key 7'" in info.value.remote_traceback
    assert job.state == JobState.FAILED
    assert "KeyError" in job.stderr()


def test_exception_that_cannot_be_unpickled_becomes_remote_error(ex):
    with pytest.raises(RemoteError, match="Unpicklable: odd") as info:
        ex.submit(fail_unpicklable).result(timeout=60)
    assert info.value.type_name.endswith("Unpicklable") and "fail_unpicklable" in info.value.remote_traceback


def lock_or_square(x):
    return threading.Lock() if x == 2 else x * x


def test_a_result_that_cannot_be_pickled_fails_only_its_own_call(ex):
    jobs = ex.map_jobs(lock_or_square, range(4), chunksize=4)  # one task: the four calls share one result file
    assert len({j.job_id for j in jobs}) == 1
    assert [jobs[i].result(timeout=60) for i in (0, 1, 3)] == [0, 1, 9]
    with pytest.raises(RemoteError, match=r"returned a value that cannot be pickled \(lock\)") as info:
        jobs[2].result(timeout=60)
    assert info.value.type_name == "hpcbridge.errors.SerializationError"
    assert jobs[2].state == JobState.FAILED and jobs[0].state == JobState.COMPLETED


def test_map_yields_results_in_order_from_one_array(ex):
    assert list(ex.map(square, range(20))) == [x * x for x in range(20)]
    jobs = ex.map_jobs(square, range(5))
    assert [j.job_id.rsplit("_", 1)[1] for j in jobs] == ["0", "1", "2", "3", "4"]
    assert len({j.job_id.rsplit("_", 1)[0] for j in jobs}) == 1


def test_map_with_several_iterables_and_timeout(ex):
    assert list(ex.map(pow, [2, 3], [5, 2], timeout=60)) == [32, 9]


def test_chunksize_bundles_calls_into_fewer_tasks(ex, tmp_path):
    jobs = ex.map_jobs(square, range(10), chunksize=4)
    assert [j.result(60) for j in jobs] == [x * x for x in range(10)]
    assert len({j.job_id for j in jobs}) == 3  # tasks of 4, 4 and 2 calls
    folders = os.listdir(tmp_path / "jobs")
    assert len(folders) == 1
    assert sorted(os.listdir(tmp_path / "jobs" / folders[0] / "res")) == ["0.0.pkl", "1.0.pkl", "2.0.pkl"]


def test_batch_gathers_submits_into_one_array(ex, tmp_path):
    with ex.batch():
        jobs = [ex.submit(square, i) for i in range(4)]
        jobs.append(ex.submit(pow, 2, 8))
    assert [j.result(60) for j in jobs] == [0, 1, 4, 9, 256]
    assert len(os.listdir(tmp_path / "jobs")) == 1


def test_batch_that_raises_submits_nothing(ex, tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ex.batch():
            job = ex.submit(square, 1)
            raise RuntimeError("boom")
    assert job.cancelled()
    assert not (tmp_path / "jobs").exists() or os.listdir(tmp_path / "jobs") == []


def test_cancel_stops_a_running_job(ex, tmp_path):
    marker = tmp_path / "started"
    job = ex.submit(_sleep_after_touch, str(marker), 120)
    deadline = time.time() + 30
    while not marker.exists():
        assert time.time() < deadline, "job did not start"
        time.sleep(0.05)
    assert job.cancel() is True
    assert job.cancelled() and job.state == JobState.CANCELLED
    with pytest.raises(concurrent.futures.CancelledError):
        job.result(timeout=1)
    pid = int(marker.read_text())
    deadline = time.time() + 10
    while _alive(pid):
        assert time.time() < deadline, "the job's process survived cancel()"
        time.sleep(0.05)
    assert job.cancel() is False  # already over


def _sleep_after_touch(path, seconds):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_stdout_and_stderr_are_captured(ex):
    job = ex.submit(talk)
    job.result(60)
    assert job.stdout() == "to stdout\n"
    assert job.stderr() == "to stderr\n"


def test_futures_protocol_callbacks_as_completed_wait_and_await(ex):
    seen = []
    done = threading.Event()
    jobs = ex.map_jobs(square, range(3))
    jobs[0].add_done_callback(lambda f: (seen.append(f.result()), done.set()))
    assert sorted(j.result() for j in concurrent.futures.as_completed(jobs, timeout=60)) == [0, 1, 4]
    finished, not_done = concurrent.futures.wait(jobs, timeout=60)
    assert len(finished) == 3 and not not_done
    assert done.wait(10) and seen == [0]

    async def main():
        return await ex.submit(square, 9)

    assert asyncio.run(main()) == 81


def test_await_reraises_and_a_cancelled_await_cancels_the_job(ex, tmp_path):
    marker = tmp_path / "started"

    async def main():
        with pytest.raises(KeyError, match="no such key 3"):
            await ex.submit(fail, 3)
        job = ex.submit(_sleep_after_touch, str(marker), 120)
        while not marker.exists():
            await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(job, 0.2)
        return job

    job = asyncio.run(main())  # returns once the cancel (run on a worker thread) is over
    assert job.cancelled() and job.state == JobState.CANCELLED
    pid = int(marker.read_text())
    deadline = time.time() + 10
    while _alive(pid):
        assert time.time() < deadline, "the job's process survived the cancelled await"
        time.sleep(0.05)


def test_awaiting_a_job_cancelled_elsewhere_raises_asyncio_cancelled_error(ex, tmp_path):
    marker = tmp_path / "started"

    async def main():
        job = ex.submit(_sleep_after_touch, str(marker), 120)
        while not marker.exists():
            await asyncio.sleep(0.05)
        waiter = asyncio.ensure_future(job)
        await asyncio.sleep(0.1)
        await asyncio.get_running_loop().run_in_executor(None, job.cancel)  # another thread cancels the job
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return waiter

    assert asyncio.run(main()).cancelled()


def test_attach_from_another_process(ex, tmp_path):
    job = ex.submit(square, 11)
    job.result(60)
    code = (
        "import json, hpcbridge\n"
        f"j = hpcbridge.attach({job.job_id!r}, site='local')\n"
        "print(json.dumps([j.result(60), j.state.value, j.job_id]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [121, "COMPLETED", job.job_id]


def test_attach_to_a_job_still_running(ex, tmp_path):
    marker = tmp_path / "go"
    job = ex.submit(_wait_for, str(marker), 42)
    other = attach(job.job_id, site="local")
    assert not other.done()
    marker.write_text("")
    assert other.result(60) == 42 and job.result(60) == 42


def _wait_for(path, value):
    while not os.path.exists(path):
        time.sleep(0.05)
    return value


def test_attach_unknown_job_says_where_it_looked():
    with pytest.raises(HpcBridgeError, match=r"no job 999999 of site 'local' in the registry .*registry.sqlite"):
        attach("999999", site="local")


def test_unpicklable_argument_is_refused_before_anything_is_written(ex, tmp_path):
    with pytest.raises(SerializationError, match=r"cannot pickle argument 0 of .*square \(lock\): TypeError"):
        ex.submit(square, threading.Lock())
    with pytest.raises(SerializationError, match=r"cannot pickle argument 0 of .*square in call 3 of the map"):
        ex.map_jobs(square, [1, 2, 3, threading.Lock()], chunksize=2)
    assert not (tmp_path / "jobs").exists()


def test_unknown_resource_and_site_fail_with_choices():
    with pytest.raises(ResourceError, match=r"unknown resource 'walltim' \(did you mean 'walltime'\?\)"):
        Executor(site="local", walltim=5)
    expected = r"unknown site 'lcoal' \(did you mean 'local'\?\); known sites: .*local"
    with pytest.raises(UnknownSiteError, match=expected):
        Executor(site="lcoal")


def test_submission_from_inside_a_job_does_not_leak_the_parent_job_env(ex, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "64")
    monkeypatch.setenv("PBS_JOBID", "7.pbs")
    monkeypatch.setenv("HPCBRIDGE_TASK", "9")
    seen = ex.submit(_env_vars, ["SLURM_JOB_ID", "SLURM_NTASKS", "PBS_JOBID", "HPCBRIDGE_TASK"]).result(60)
    assert seen == {"SLURM_JOB_ID": None, "SLURM_NTASKS": None, "PBS_JOBID": None, "HPCBRIDGE_TASK": "0"}


def _env_vars(names):
    return {n: os.environ.get(n) for n in names}


def test_job_folders_are_private(ex, tmp_path):
    job = ex.submit(square, 2)
    job.result(60)
    assert os.stat(tmp_path / "jobs").st_mode & 0o777 == 0o700
    assert os.stat(job.folder).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(job.folder, "inputs.bin")).st_mode & 0o777 == 0o600
    for sub in ("log", "res"):
        assert os.stat(os.path.join(job.folder, sub)).st_mode & 0o777 == 0o700


def test_new_parents_of_the_job_folder_are_private_too(tmp_path):
    # e.g. folder="~/.hpcbridge/jobs" on a first run: ~/.hpcbridge must not be left world-readable
    job = Executor(site="local", folder=str(tmp_path / "a" / "b" / "jobs")).submit(square, 3)
    assert job.result(60) == 9
    for d in ("a", "a/b", "a/b/jobs"):
        assert os.stat(tmp_path / d).st_mode & 0o777 == 0o700, d


def test_with_resources_is_a_copy(ex):
    other = ex.with_resources(cpus_per_task=2, name="two")
    assert other.resources.cpus_per_task == 2 and ex.resources.cpus_per_task == 1
    assert other.submit(square, 3).result(60) == 9


def test_shutdown_waits_and_context_manager(tmp_path):
    with Executor(site="local", folder=str(tmp_path / "j")) as ex:
        jobs = ex.map_jobs(square, range(3))
    assert all(j.done() for j in jobs)


def test_a_map_longer_than_the_max_array_size_is_split(tmp_path):
    import dataclasses

    from hpcbridge import load_site

    site = dataclasses.replace(load_site("local"), max_array_size=5)
    ex = Executor(site=site, folder=str(tmp_path / "jobs"))
    jobs = ex.map_jobs(square, range(12))
    assert [j.result(60) for j in jobs] == [x * x for x in range(12)]
    arrays = [j.job_id.rsplit("_", 1)[0] for j in jobs]
    assert len(set(arrays)) == 3 and arrays[0] == arrays[4] != arrays[5]
    assert [j.job_id.rsplit("_", 1)[1] for j in jobs[5:10]] == ["0", "1", "2", "3", "4"]
    assert len(os.listdir(tmp_path / "jobs")) == 3


def _value_of_a_class_unknown_here():
    import types

    mod = types.ModuleType("only_in_the_job")
    exec("class Point:\n    def __init__(self, x):\n        self.x = x\n", mod.__dict__)
    sys.modules["only_in_the_job"] = mod
    return mod.Point(3)


def test_a_result_that_cannot_be_unpickled_here_fails_the_job_clearly(ex):
    job = ex.submit(_value_of_a_class_unknown_here)
    with pytest.raises(RemoteError, match="the job's result could not be unpickled on this side"):
        job.result(60)


def test_cancelling_one_array_task_leaves_the_others_running(ex, tmp_path):
    markers = [tmp_path / f"m{i}" for i in range(3)]
    go = tmp_path / "go"
    jobs = ex.map_jobs(_touch_then_wait, [str(m) for m in markers], [str(go)] * 3, range(3))
    deadline = time.time() + 30
    while not all(m.exists() for m in markers[:2]):  # two run at once on this 2-core machine
        assert time.time() < deadline, "tasks did not start"
        time.sleep(0.05)
    assert jobs[1].cancel() is True
    pid = int(markers[1].read_text())
    deadline = time.time() + 10
    while _alive(pid):
        assert time.time() < deadline, "the cancelled task's process survived"
        time.sleep(0.05)
    go.write_text("")
    assert jobs[0].result(60) == 0 and jobs[2].result(60) == 2
    assert jobs[1].cancelled() and jobs[1].state == JobState.CANCELLED


def _touch_then_wait(marker, go, value):
    with open(marker, "w") as fh:
        fh.write(str(os.getpid()))
    _wait_for(go, None)
    return value


def test_cancel_and_attach_of_a_job_in_a_custom_folder(ex, tmp_path):
    marker = tmp_path / "started"
    job = ex.submit(_sleep_after_touch, str(marker), 120)
    deadline = time.time() + 30
    while not marker.exists():
        assert time.time() < deadline
        time.sleep(0.05)
    other = attach(job.job_id, site="local")
    assert other.cancel() is True
    pid = int(marker.read_text())
    deadline = time.time() + 10
    while _alive(pid):
        assert time.time() < deadline, "cancel through attach() did not stop the job"
        time.sleep(0.05)


def test_attach_to_an_array_id_names_its_tasks(ex):
    jobs = ex.map_jobs(square, range(3))
    array_id = jobs[0].job_id.rsplit("_", 1)[0]
    with pytest.raises(HpcBridgeError, match=rf"job {array_id} is an array of 3 task\(s\); attach one of them: "
                                             rf"{array_id}_0, {array_id}_1, {array_id}_2"):
        attach(array_id, site="local")


def test_batch_whose_submission_fails_leaves_no_pending_future(tmp_path):
    import dataclasses

    from hpcbridge import load_site
    from hpcbridge.errors import RemoteEnvironmentError

    site = dataclasses.replace(load_site("local"), python="/nonexistent/python3")
    ex = Executor(site=site, folder=str(tmp_path / "jobs"))
    with pytest.raises(RemoteEnvironmentError):
        with ex.batch():
            job = ex.submit(square, 2)
    with pytest.raises(RemoteEnvironmentError):
        job.result(timeout=1)


def test_batch_that_raises_wakes_waiters(ex):
    with pytest.raises(RuntimeError):
        with ex.batch():
            job = ex.submit(square, 1)
            raise RuntimeError("stop")
    done, not_done = concurrent.futures.wait([job], timeout=2)
    assert job in done and not not_done


def test_the_registry_is_private(ex, tmp_path):
    from hpcbridge.registry import Registry

    ex.submit(square, 1).result(60)
    path = Registry().path
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("fn, arg, state", [(square, 3, "COMPLETED"), (fail, 3, "FAILED")])
def test_a_final_state_is_noted_before_the_future_resolves_and_written_at_exit(ex, fn, arg, state):
    """A script (or CLI) may exit the moment its future resolves: by then the final state must be noted, so that
    the exit's flush (the atexit hook flush_all_states) writes it; the registry must not say PENDING/RUNNING."""
    from hpcbridge.backend import flush_all_states
    from hpcbridge.registry import Registry

    seen = []
    called = threading.Event()

    def on_done(_):  # runs inside the resolution, right after the future's waiters were woken
        flush_all_states()  # what the interpreter's exit does if the caller leaves now
        seen.append([row["last_state"] for row in Registry().find("local", job.job_id)])
        called.set()

    job = ex.submit(fn, arg)
    job.add_done_callback(on_done)
    assert called.wait(60)
    assert seen == [[state]]


def test_a_job_folder_that_cannot_stand_in_a_directive_is_refused(tmp_path):
    from hpcbridge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"must be an absolute path without spaces, quotes, '%' or '#'"):
        Executor(site="local", folder=str(tmp_path / "my jobs"))


def test_a_job_cancelled_inside_a_batch_is_not_submitted(ex):
    with ex.batch():
        a = ex.submit(square, 2)
        b = ex.submit(square, 3)
        c = ex.submit(square, 4)
        assert b.cancel() is True
    assert b.cancelled() and (a.result(60), c.result(60)) == (4, 16)
    assert a.job_id.rsplit("_", 1)[1] == "0" and c.job_id.rsplit("_", 1)[1] == "1"


MY_TEMPLATE = """\
#!/bin/bash
{% for d in directives %}
#LOCAL {{ d }}
{% endfor %}
# my own template: {{ description }}
echo "my template ran" >&2
{% include "partials/body.sh.j2" %}
"""


@pytest.mark.parametrize("via", ["XDG_CONFIG_HOME", "HOME"])
def test_a_users_template_folder_overrides_the_built_in_template(tmp_path, monkeypatch, via):
    config = tmp_path / "config" if via == "XDG_CONFIG_HOME" else tmp_path / "home" / ".config"
    (config / "hpcbridge" / "templates").mkdir(parents=True)
    (config / "hpcbridge" / "templates" / "local.sh.j2").write_text(MY_TEMPLATE)
    if via == "XDG_CONFIG_HOME":
        monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    else:  # the default: ~/.config/hpcbridge/templates
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ex = Executor(site="local", folder=str(tmp_path / "jobs"))
    script = ex.render(square, 5)
    assert "\n# my own template: " in script and 'echo "my template ran" >&2\n' in script
    assert "hpcbridge.worker" in script  # the built-in partial it includes
    job = ex.submit(square, 5)
    assert job.result(60) == 25
    assert job.script.split("\n# my own template: ", 1)[1].startswith(f"{square.__module__}.square, 1 call\n")
    assert job.stderr() == "my template ran\n"


def test_without_a_users_template_the_built_in_one_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-config"))
    script = Executor(site="local", folder=str(tmp_path / "jobs")).render(square, 5)
    assert "# my own template" not in script and "\n# hpcbridge " in script


# -- usage errors: clear, before anything is submitted ----------------------------------------------------------
@pytest.mark.parametrize("chunksize", [0, -1, True, 2.0, "3"])
def test_a_chunksize_that_is_not_a_whole_number_of_calls_is_refused(ex, chunksize):
    from hpcbridge.errors import ResourceError

    with pytest.raises(ResourceError, match=rf"chunksize={chunksize!r} must be a whole number >= 1 \(the calls per "):
        ex.map_jobs(abs, range(4), chunksize=chunksize)
    assert ex._submissions == []  # nothing was submitted


def test_a_batch_inside_a_batch_is_refused_and_the_outer_one_still_submits(ex):
    from hpcbridge.errors import HpcBridgeError, UsageError

    with ex.batch():
        first = ex.submit(abs, -1)
        with pytest.raises(UsageError, match=r"executor.batch\(\) blocks cannot be nested: end the outer block") as err:
            with ex.batch():
                pass  # pragma: no cover
        assert isinstance(err.value, HpcBridgeError)
    assert first.result(timeout=60) == 1
