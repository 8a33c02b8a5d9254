"""Resources and site keys that only a golden file showed before, proven on the live Slurm test cluster (issue 16):
``account``, ``qos`` and ``array_parallelism`` as Slurm applies them (squeue, sacct); a site's ``env``, ``modules``
and ``setup`` inside the job; a user's template override and a site's ``templates`` folder.

The cluster side (tests/cluster/up, docs/testcluster-contract.md): alice is in the accounts ``research`` (her
default) and ``teaching``, may use the QOS ``express`` besides ``normal`` (``AccountingStorageEnforce=
associations,qos``), and Debian's environment-modules provides the module ``hpcbtest/1.0`` (HPCBTEST_MODULE, and
``hpcbtest-hello`` on PATH). Each value asked for differs from the cluster's default, so a key that were ignored
would fail its test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hpcbridge import Executor, load_site
from hpcbridge.errors import JobLostError, SchedulerError
from hpcbridge.render import package_template_dir

WAIT = 300  # the cluster is shared: jobs may queue behind others'


def square(x: int) -> int:
    return x * x


def napping(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def job_env(*names: str) -> dict[str, Any]:
    """The job's view: the named variables, and where ``hpcbtest-hello`` (the module's command) is on PATH."""
    out: dict[str, Any] = {name: os.environ.get(name) for name in names}
    out["hpcbtest-hello"] = shutil.which("hpcbtest-hello")
    return out


def slurm_record(cluster: Any, job_id: str, fields: str, timeout: float = 120) -> list[str]:
    """sacct's ``fields`` of a job allocation, once accounting has it in a final state with every field filled in
    (just after slurmctld restarted, sacct was seen to print a QOS as "Unknown" for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.run(["sacct", "-n", "-X", "-P", "-S", cluster.since, "-j", job_id, "-o", f"JobID,State,{fields}"],
                          timeout=60).stdout
        rows = [line.split("|") for line in out.splitlines() if line.startswith(f"{job_id}|")]
        if rows and rows[-1][1] not in ("PENDING", "RUNNING", "") and not {"", "Unknown"} & set(rows[-1][2:]):
            return rows[-1][2:]
        assert time.monotonic() < deadline, f"sacct has no final record of {job_id}: {out!r}"
        time.sleep(0.5)


def squeue_record(cluster: Any, job_id: str, fmt: str) -> str:
    """squeue's view of a job (``--states=all``: a job that has just ended is still listed, for MinJobAge)."""
    return cluster.run(["squeue", "--noheader", "--states=all", "-j", job_id, "-o", fmt], timeout=60).stdout.strip()


def refused(cluster: Any, folder: Path, **resources: Any) -> SchedulerError:
    """The SchedulerError of a submission sbatch refuses, after checking that nothing was left behind."""
    before = cluster.squeue_ids()
    ex = Executor(site="testcluster", folder=str(folder), **resources)
    with pytest.raises(SchedulerError) as info:
        ex.submit(square, 3)
    cluster.assert_nothing_left(before, folder)
    return info.value


# -- resources ---------------------------------------------------------------------------------------------------


def test_account_is_applied_and_an_account_the_user_is_not_in_is_refused(ex, cluster, cluster_workdir):
    research = ex.with_resources(account="research").submit(square, 2)
    teaching = ex.with_resources(account="teaching").submit(square, 3)  # not alice's default account
    # 'root' exists (slurmdbd's own account) but alice is not in it
    assert "root" in cluster.run(["sacctmgr", "-n", "-P", "list", "account", "format=account"]).stdout.split()
    err = refused(cluster, cluster_workdir / "refused", account="root")
    assert "could not submit the job on site 'testcluster'" in str(err)
    assert "Invalid account or account/partition combination specified" in err.stderr
    assert err.argv[:2] == ["sbatch", "--parsable"] and err.exit_code == 1

    assert "#SBATCH --account=teaching\n" in teaching.script
    assert squeue_record(cluster, teaching.job_id, "%a") == "teaching"
    assert squeue_record(cluster, research.job_id, "%a") == "research"
    assert (research.result(timeout=WAIT), teaching.result(timeout=WAIT)) == (4, 9)
    assert slurm_record(cluster, teaching.job_id, "Account") == ["teaching"]
    assert slurm_record(cluster, research.job_id, "Account") == ["research"]


def test_qos_is_applied_and_an_unknown_qos_is_refused(ex, cluster, cluster_workdir):
    express = ex.with_resources(qos="express").submit(square, 4)  # alice's default QOS is 'normal'
    plain = ex.submit(square, 5)
    err = refused(cluster, cluster_workdir / "refused", qos="warp-speed")
    assert "could not submit the job on site 'testcluster'" in str(err)
    assert "Invalid qos specification" in err.stderr

    assert "#SBATCH --qos=express\n" in express.script and "--qos" not in plain.script
    assert squeue_record(cluster, express.job_id, "%q") == "express"
    assert squeue_record(cluster, plain.job_id, "%q") == "normal"
    assert (express.result(timeout=WAIT), plain.result(timeout=WAIT)) == (16, 25)
    assert slurm_record(cluster, express.job_id, "QOS") == ["express"]
    assert slurm_record(cluster, plain.job_id, "QOS") == ["normal"]


def test_array_parallelism_caps_the_tasks_running_at_once(ex, cluster):
    # 6 tasks of 2 s on 6 free CPUs: without the cap they would all run at once
    jobs = ex.with_resources(array_parallelism=2).map_jobs(napping, [2] * 6, range(6))
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{t}" for t in range(6)]
    most_running, pending_ids = 0, set()
    deadline = time.monotonic() + WAIT
    while not all(j.done() for j in jobs):
        out = cluster.run(["squeue", "--noheader", "-j", array_id, "-o", "%i|%T"], timeout=60).stdout
        rows = [line.split("|") for line in out.splitlines()]
        most_running = max(most_running, sum(state == "RUNNING" for _, state in rows))
        pending_ids |= {job_id for job_id, state in rows if state == "PENDING"}
        assert time.monotonic() < deadline, f"the array did not finish: {out}"
        time.sleep(0.2)
    assert [j.result(timeout=WAIT) for j in jobs] == list(range(6))
    assert 1 <= most_running <= 2, most_running
    # squeue shows the cap on the tasks still waiting: 123_[2-5%2]
    assert any(re.fullmatch(rf"{array_id}_\[[0-9,-]+%2\]", p) for p in pending_ids), pending_ids
    assert set(cluster.sacct_array(array_id, 6).values()) == {"COMPLETED"}


# -- site env, modules, setup ------------------------------------------------------------------------------------

MODULE_VARS = ("MODULEPATH", "MODULESHOME", "LOADEDMODULES", "MODULES_CMD", "BASH_ENV", "ENV")


def login_shell_additions() -> dict[str, str]:
    """What a login shell of this user adds to the current environment: on the test cluster, as on a real site,
    /etc/profile.d/modules.sh (environment-modules) defines and exports ``module`` (BASH_FUNC_module%%) and sets
    BASH_ENV, MODULEPATH, MODULESHOME ..."""
    p = subprocess.run(["bash", "-l", "-c", "env -0"], capture_output=True, text=True, timeout=60, check=True,
                       cwd=Path.home())
    login = dict(item.split("=", 1) for item in p.stdout.split("\0") if "=" in item)
    return {k: v for k, v in login.items() if k not in os.environ and k not in ("_", "SHLVL", "PWD", "OLDPWD")}


def without_module_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment as a shell without the module system has it (pytest may run from a login shell)."""
    for name in list(os.environ):
        if name.startswith(("BASH_FUNC_", "__MODULES_", "_LMFILES_")) or name in MODULE_VARS:
            monkeypatch.delenv(name)


def write_user_site(config: Path, text: str) -> None:
    """``$XDG_CONFIG_HOME/hpcbridge/sites/testcluster.toml``: the user's layer over /etc's testcluster.toml."""
    sites = config / "hpcbridge" / "sites"
    sites.mkdir(parents=True)
    (sites / "testcluster.toml").write_text(text)


SITE_ENV_VALUE = "a value with spaces, a 'quote' and $HOME"


def test_site_env_modules_and_setup_reach_the_job(cluster, cluster_workdir, tmp_path, monkeypatch):
    names = ("HPCBTEST_MODULE", "LOADEDMODULES", "HPCBTEST_SITE_ENV", "HPCBTEST_SETUP", "OMPI_MCA_btl")
    without_module_command(monkeypatch)
    # without `module` in the batch shell, the modules line fails the job at once, and its stderr says why
    no_module = Executor(site=load_site("testcluster", modules=["hpcbtest/1.0"]), folder=str(cluster_workdir / "a"))
    lost = no_module.submit(job_env, *names)
    # ... which `setup` can fix on such a site: the module system's init script, then the module (docs/site-configs.md)
    in_setup = Executor(
        site=load_site("testcluster", setup=["source /usr/share/modules/init/bash", "module load hpcbtest/1.0"]),
        folder=str(cluster_workdir / "b"),
    )
    fixed = in_setup.submit(job_env, *names)

    # a site-config layered on /etc's testcluster.toml, and a job submitted from a login shell (as users do)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    write_user_site(tmp_path / "config", f"""\
modules = ["hpcbtest/1.0"]
setup = ['export HPCBTEST_SETUP="$(hpcbtest-hello setup) after $HPCBTEST_MODULE"']

[env]
HPCBTEST_SITE_ENV = "{SITE_ENV_VALUE}"
""")
    login = login_shell_additions()
    # the site's login shells define `module` and point BASH_ENV at its init script, which every bash a job
    # starts then reads (an exported function alone would not reach it: hpcbridge's /bin/sh here is dash)
    assert "BASH_FUNC_module%%" in login and login.get("BASH_ENV") == "/usr/share/modules/init/bash", sorted(login)
    for name, val in login.items():
        monkeypatch.setenv(name, val)
    ex = Executor(site="testcluster", folder=str(cluster_workdir / "jobs"))
    assert ex.site.modules == ("hpcbtest/1.0",) and ex.site.env["OMPI_MCA_btl"] == "self,tcp"  # tables merge
    job = ex.submit(job_env, *names)

    module_bin = "/var/lib/hpcbridge-testcluster/modules/apps/hpcbtest/1.0/bin/hpcbtest-hello"
    assert job.result(timeout=WAIT) == {
        "HPCBTEST_MODULE": "hpcbtest/1.0 loaded",
        "LOADEDMODULES": "hpcbtest/1.0",
        "HPCBTEST_SITE_ENV": SITE_ENV_VALUE,  # exactly, not expanded
        "HPCBTEST_SETUP": "hello from hpcbtest/1.0 (setup) after hpcbtest/1.0 loaded",  # run after the module
        "OMPI_MCA_btl": "self,tcp",
        "hpcbtest-hello": module_bin,
    }
    assert "\nmodule load hpcbtest/1.0\n" in job.script
    assert fixed.result(timeout=WAIT)["HPCBTEST_MODULE"] == "hpcbtest/1.0 loaded"
    assert fixed.result()["hpcbtest-hello"] == module_bin
    with pytest.raises(JobLostError, match=r"without writing a result") as info:
        lost.result(timeout=WAIT)
    assert "module: command not found" in info.value.stderr_tail, info.value.stderr_tail


# -- templates ---------------------------------------------------------------------------------------------------


def marked_template(folder: Path, who: str) -> Path:
    """``folder/slurm.sh.j2``: the built-in template plus two lines: a marker on stderr and HPCBTEST_TEMPLATE=who."""
    builtin = (Path(package_template_dir()) / "slurm.sh.j2").read_text()
    include = '{% include "partials/body.sh.j2" %}'
    assert include in builtin
    extra = f'echo "hpcbtest: the {who} template" >&2\nexport HPCBTEST_TEMPLATE={who}\n'
    folder.mkdir(parents=True)
    (folder / "slurm.sh.j2").write_text(builtin.replace(include, extra + include))
    return folder


def test_a_users_template_and_a_sites_templates_folder_replace_the_built_in_one(cluster, cluster_workdir, tmp_path,
                                                                                monkeypatch):
    user_dir = marked_template(tmp_path / "config" / "hpcbridge" / "templates", "user")
    site_dir = marked_template(tmp_path / "site-templates", "site")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = str(cluster_workdir / "jobs")

    # the user's folder: $XDG_CONFIG_HOME/hpcbridge/templates
    user = Executor(site="testcluster", folder=folder)
    assert "export HPCBTEST_TEMPLATE=user\n" in user.render(job_env, "HPCBTEST_TEMPLATE")
    by_user = user.submit(job_env, "HPCBTEST_TEMPLATE")
    # it comes before a site's folder
    both = Executor(site=load_site("testcluster", templates=[str(site_dir)]), folder=folder)
    rendered = both.render(job_env, "HPCBTEST_TEMPLATE")
    assert "HPCBTEST_TEMPLATE=user\n" in rendered and "HPCBTEST_TEMPLATE=site" not in rendered
    # without one, the site's folder replaces the built-in template
    shutil.rmtree(user_dir)
    by_site = both.submit(job_env, "HPCBTEST_TEMPLATE")
    builtin = Executor(site="testcluster", folder=folder).render(job_env, "HPCBTEST_TEMPLATE")
    assert "hpcbtest" not in builtin.lower()

    for job, who in ((by_user, "user"), (by_site, "site")):
        assert job.result(timeout=WAIT)["HPCBTEST_TEMPLATE"] == who
        assert f'\necho "hpcbtest: the {who} template" >&2\nexport HPCBTEST_TEMPLATE={who}\n' in job.script
        assert job.stderr().startswith(f"hpcbtest: the {who} template\n"), job.stderr()
