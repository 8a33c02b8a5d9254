"""The image check's decisions (hpcbridge/container_check.py) against a scripted cluster: which program runs the
image, what is cached, the digest, and the render with the program found. The check itself runs for real in
tests/live/test_containers_live.py (Charliecloud on the test cluster)."""

from __future__ import annotations

import hashlib
import json
import sys

import cloudpickle
import pytest

import hpcbridge
from hpcbridge import Executor, container_check
from hpcbridge.errors import ContainerError
from hpcbridge.sites import site_from_mapping
from hpcbridge.testing import ScriptedTransport, this_python

SIF = "/sw/images/worker.sif"
PY = "/opt/py/bin/python"


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch):
    monkeypatch.setattr(container_check, "_PASSED", {})
    monkeypatch.setattr(container_check, "_BINARIES", {})


def _site(runtime="apptainer", image=SIF, **container):
    return site_from_mapping("hpc", {"scheduler": "slurm", "python": PY, "workdir": "/scratch/u/jobs",
                                     "container": {"runtime": runtime, "image": image, **container}})


def _image_python(python=None, cp=None, hb=hpcbridge.__version__, missing=(), hosts=True):
    info = {"python": python or ".".join(str(v) for v in sys.version_info[:3]), "executable": "/usr/bin/python3",
            "cloudpickle": cp or cloudpickle.__version__, "hpcbridge": hb, "missing": list(missing), "hosts": hosts}
    return (0, json.dumps(info) + "\n", "")


def _cluster(**over):
    answers = {
        "env": lambda argv: (127, "", f"env: '{argv[1]}': No such file or directory\n") if argv[1] == "apptainer"
        else (0, "singularity-ce version 4.1.0\n", ""),
        "stat": (0, "regular file\n", ""),
        "singularity": _image_python(),
        "sha256sum": (0, "ab" * 32 + f"  {SIF}\n", ""),
        "sbatch": (0, "4242\n", ""),
        "sacct": (0, "", ""),
        PY: this_python(),
    }
    answers.update(over)
    return ScriptedTransport(answers=answers)


def test_apptainer_missing_singularity_found_once_per_site_and_it_runs_the_image():
    t = _cluster()
    ex = Executor(site=_site(), transport=t, folder="/scratch/u/jobs")
    first = ex.submit(pow, 2, 3)
    second = ex.submit(pow, 2, 4)
    assert [c[:2] for c in t.calls if c[0] == "env"] == [["env", "apptainer"], ["env", "singularity"]]
    assert t.programs().count("singularity") == 1 and t.programs().count("sha256sum") == 1  # checked once
    assert PY not in t.programs()  # no launcher: the host's python is not needed
    for job in (first, second):
        last = t.script_of(job).rstrip().splitlines()[-1]
        assert last.startswith("exec singularity exec --cleanenv --env-file ")
        assert job.image == f"{SIF}@{'ab' * 6}"
    meta = json.loads(t.files[f"{first.folder}/meta.json"])
    assert meta["container"] == {"runtime": "apptainer", "binary": "singularity", "image": SIF,
                                 "digest": f"sha256:{'ab' * 32}", "python": meta["container"]["python"]}
    assert t.files[f"{first.folder}/container.env"].startswith(b"# hpcbridge: the host variables")


def test_a_launcher_needs_the_hosts_python_for_its_launch_step():
    t = _cluster()
    Executor(site=_site(), transport=t, nodes=2, launcher="srun").submit(pow, 2, 3)
    assert PY in t.programs()


def test_a_failed_check_is_not_kept_and_nothing_is_submitted():
    t = _cluster(singularity=_image_python(hb=None))
    ex = Executor(site=_site(), transport=t)
    with pytest.raises(ContainerError, match="hpcbridge is not installed in it"):
        ex.submit(pow, 2, 3)
    assert "/bin/sh" not in t.programs() and not [c for c in t.calls if c[0] in ("write_files", "makedirs")]
    t.answers["singularity"] = _image_python()  # the image was fixed: the next submission checks again, and passes
    ex.submit(pow, 2, 3)
    assert t.programs().count("singularity") == 2


def test_neither_program_is_a_clear_error():
    t = _cluster(env=(127, "", "env: 'x': No such file or directory\n"))
    with pytest.raises(ContainerError) as info:
        Executor(site=_site(runtime="singularity"), transport=t).submit(pow, 2, 3)
    assert str(info.value).startswith("site 'hpc': the container runtime 'singularity' is not installed on the "
                                      "cluster: neither 'singularity' nor 'apptainer' is on the login node's PATH.")


def test_a_directory_images_digest_is_its_sorted_listing():
    listing = "d 755 4096 1.5 usr -> \0f 644 10 2.5 etc/hosts -> \0"
    t = _cluster(**{"stat": (0, "directory\n", ""), "ch-run": _image_python(), "find": (0, listing, "")})
    job = Executor(site=_site("charliecloud", "/images/w"), transport=t).submit(pow, 2, 3)
    entries = sorted(["d 755 4096 1.5 usr -> ", "f 644 10 2.5 etc/hosts -> "])
    digest = hashlib.sha256("\n".join(entries).encode()).hexdigest()
    assert json.loads(t.files[f"{job.folder}/meta.json"])["container"]["digest"] == f"manifest-sha256:{digest}"


def test_an_image_without_etc_hosts_is_run_with_a_warning(caplog):
    t = _cluster(**{"stat": (0, "directory\n", ""), "ch-run": _image_python(hosts=False), "find": (0, "", "")})
    Executor(site=_site("charliecloud", "/images/w"), transport=t).submit(pow, 2, 3)
    assert "has no /etc/hosts" in caplog.text


def test_check_false_and_pyxis_skip_the_check():
    t = _cluster()
    Executor(site=_site(check=False), transport=t).submit(pow, 2, 3)
    Executor(site=_site("pyxis", "ubuntu:24.04"), transport=t).submit(pow, 2, 3)
    assert not {"env", "stat", "singularity", "apptainer"} & set(t.programs())
