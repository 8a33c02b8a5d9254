"""Site-configs from files: the layers and who wins, --origin, and every validation message as a user reads it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

import hpcbridge.sites.loading as loading
from hpcbridge.errors import ConfigError, UnknownSiteError
from hpcbridge.sites.loading import load_site

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text).lstrip("\n"))
    return str(path)


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """Empty system, env-path, package, user and project layers under tmp_path; cwd is the project's subfolder."""
    d = {k: tmp_path / k for k in ("system", "envpath", "package", "xdg", "project")}
    for p in d.values():
        p.mkdir()
    monkeypatch.setattr(loading, "SYSTEM_DIR", str(d["system"]))
    monkeypatch.setenv("HPCBRIDGE_SITES_PATH", str(d["envpath"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(d["xdg"]))
    monkeypatch.delenv("HPCBRIDGE_SITE", raising=False)
    monkeypatch.setattr(loading, "package_dirs", lambda: [("package mycentre-hpcbridge 1.0", str(d["package"]))])
    (d["project"] / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(d["project"] / "src" / "deep")
    d["user"] = d["xdg"] / "hpcbridge" / "sites"
    return d


# -- layering ---------------------------------------------------------------------------------------------------
def test_each_layer_overrides_the_one_below_and_origin_says_where(layers):
    sysf = write(layers["system"] / "hpc.toml", """
        description = "the system's"
        python = "/sys/python"
        workdir = "/sys/work"
        [defaults]
        walltime = "00:10:00"
        [partitions.gpu]
        max_nodes = 4
        gpus_per_node = 4
        [env]
        A = "system"
    """)
    envf = write(layers["envpath"] / "hpc.toml", """
        workdir = "/envpath/work"
    """)
    pkgf = write(layers["package"] / "hpc.toml", """
        [defaults]
        walltime = "00:20:00"
        [env]
        B = "package"
    """)
    userf = write(layers["user"] / "hpc.toml", """
        [defaults]
        account = "alice-proj"
        [partitions.gpu]
        max_nodes = 2
    """)
    projf = write(layers["project"] / "hpcbridge.toml", """
        default_site = "hpc"

        [sites.hpc]
        python = "/project/python"

        [sites.hpc.env]
        A = "project"
    """)
    site = load_site("hpc", max_array_size=50)
    assert site.description == "the system's"
    assert site.workdir == "/envpath/work"
    assert site.python == "/project/python"
    assert site.max_array_size == 50
    assert dict(site.defaults) == {"walltime": "00:20:00", "account": "alice-proj"}
    assert dict(site.env) == {"A": "project", "B": "package"}
    assert site.partitions["gpu"].max_nodes == 2 and site.partitions["gpu"].gpus_per_node == 4
    assert site.origins["description"] == f"{sysf}:1"
    assert site.origins["workdir"] == f"{envf}:1"
    assert site.origins["defaults.walltime"] == f"{pkgf}:2 (package mycentre-hpcbridge 1.0)"
    assert site.origins["defaults.account"] == f"{userf}:2"
    assert site.origins["partitions.gpu.max_nodes"] == f"{userf}:4"
    assert site.origins["partitions.gpu.gpus_per_node"] == f"{sysf}:8"
    assert site.origins["python"] == f"{projf}:4"
    assert site.origins["env.A"] == f"{projf}:7"
    assert site.origins["max_array_size"] == "keyword argument"
    assert site.origins["accounting"] == "built-in default"
    assert site.origin == (sysf, envf, f"{pkgf} (package mycentre-hpcbridge 1.0)", userf, projf)
    assert loading.default_site() == "hpc"


def test_the_env_variable_names_the_default_site_before_the_project_file(layers, monkeypatch):
    write(layers["project"] / "hpcbridge.toml", 'default_site = "hpc"\n')
    monkeypatch.setenv("HPCBRIDGE_SITE", "other")
    assert loading.default_site() == "other"


def test_the_default_site_says_where_it_came_from(layers, monkeypatch):
    assert loading.default_site_origin() == ("local", "the built-in default")
    projf = write(layers["project"] / "hpcbridge.toml", 'default_site = "hpc"\n')
    assert loading.default_site_origin() == ("hpc", f"default_site in {projf}")
    monkeypatch.setenv("HPCBRIDGE_SITE", "other")
    assert loading.default_site_origin() == ("other", "$HPCBRIDGE_SITE")


def test_a_project_file_alone_can_define_a_site_and_the_nearest_one_wins(layers):
    write(layers["project"] / "hpcbridge.toml", '[sites.far]\npython = "/far"\n')
    write(layers["project"] / "src" / "hpcbridge.toml", '[sites.near]\npython = "/near"\n')
    assert load_site("near").python == "/near"
    with pytest.raises(UnknownSiteError):
        load_site("far")  # only the nearest project file counts
    assert "near" in loading.known_sites()


def test_local_is_built_in_and_can_be_tuned_by_a_user_file(layers):
    assert load_site("local").scheduler == "local"
    write(layers["user"] / "local.toml", "local_parallel = 3\n")
    site = load_site("local")
    assert site.scheduler == "local" and site.local_parallel == 3
    assert site.origins["scheduler"] == "built-in"


def test_unknown_site_lists_the_known_ones_with_a_suggestion(layers):
    write(layers["system"] / "mycluster.toml", 'python = "/p"\n')
    with pytest.raises(UnknownSiteError) as info:
        load_site("mycluter")
    assert str(info.value).startswith(
        "unknown site 'mycluter' (did you mean 'mycluster'?); known sites: local, mycluster. "
        "Add mycluter.toml to one of: "
    )


def test_sites_list_says_which_layers_define_each_site(layers):
    write(layers["system"] / "hpc.toml", 'python = "/p"\n')
    write(layers["user"] / "hpc.toml", 'python = "/q"\n')
    write(layers["package"] / "pkgsite.toml", 'python = "/r"\n')
    assert loading.site_names() == {"hpc": ["system", "user"], "local": ["built-in"], "pkgsite": ["package"]}


# -- validation messages ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, line, message",
    [
        ('pyhton = "/x"\n', 1,
         "unknown key 'pyhton' in the top level (did you mean 'python'?); valid keys: description, scheduler, "
         "flavour, transport, ssh, python, workdir, accounting, max_array_size, poll_interval_min_s, "
         "poll_interval_max_s, result_grace_s, right_size, local_parallel, modules, setup, templates, defaults, "
         "partitions, env, slurm, container, mpi, nccl, distributed"),
        ('[partitions.gpu]\nmax_node = 3\n', 2,
         "unknown key 'max_node' in [partitions.gpu] (did you mean 'max_nodes'?); valid keys: max_nodes, "
         "cpus_per_node, mem_gb_per_node, gpus_per_node, gpu_type, max_walltime, default, description, requeue"),
        ('[slurm]\ngpu_directiv = "gres"\n', 2,
         "unknown key 'gpu_directiv' in [slurm] (did you mean 'gpu_directive'?); valid keys: mpi, gpu_directive, "
         "srun_args"),
        ('[ssh]\nhostname = "x"\n', 2,
         "unknown key 'hostname' in [ssh] (did you mean 'host'?); valid keys: host, user, port, identity_file, "
         "proxy_jump, known_hosts, config_file, connect_timeout_s, keepalive_s"),
        ('[container]\nimages = "a.sif"\n', 2,
         "unknown key 'images' in [container] (did you mean 'image'?); valid keys: runtime, image, binds, options, "
         "env, gpu, python, check"),
        ('[mpi]\nmpi_run = "x"\n', 2,
         "unknown key 'mpi_run' in [mpi] (did you mean 'mpirun'?); valid keys: mpirun, args, env, flavour"),
        ('[defaults]\nwall_time = "1:00:00"\n', 2,
         "unknown key 'wall_time' in [defaults] (did you mean 'walltime'?); valid keys: nodes, tasks_per_node, "
         "cpus_per_task, gpus_per_node, mem_gb, walltime, partition, account, qos, name, extra_directives, "
         "launcher, array_parallelism, container, container_binds, container_runtime, container_env, requeue, "
         "signal_grace_s, restartable"),
    ],
)
def test_an_unknown_key_in_any_table_names_file_line_and_the_closest_key(layers, text, line, message):
    path = write(layers["system"] / "hpc.toml", text)
    with pytest.raises(ConfigError) as info:
        load_site("hpc")
    assert str(info.value) == f"{path}:{line}: {message}"  # the whole list: a key left out of it fails here


@pytest.mark.parametrize(
    "text, line, message",
    [
        ('[partitions.gpu]\nmax_nodes = "3"\n', 2,
         "partitions.gpu.max_nodes: must be a whole number, got a string ('3')"),
        ('scheduler = "slurn"\n', 1,
         "scheduler: 'slurn' is not one of 'slurm', 'pbs', 'local' (did you mean 'slurm'?)"),
        ('accounting = "yes"\n', 1, "accounting: must be true or false, got a string ('yes')"),
        ('modules = "gcc"\n', 1, 'modules: must be a list of strings such as ["a", "b"], got a string (\'gcc\')'),
        ('[env]\n"BAD-NAME" = "x"\n', 2, "env.BAD-NAME: 'BAD-NAME' is not a valid environment variable name"),
        ('[partitions.gpu]\nmax_walltime = "2 days"\n', 2, "partitions.gpu.max_walltime: '2 days' is not a duration"),
        ('[defaults]\nmem_gb = "lots"\n', 2, "defaults.mem_gb: mem_gb='lots' is not a memory size"),
        ("max_array_size = 0\n", 1, "max_array_size: must be >= 1, got 0"),
        ('python = "/x"\nresult_grace_s = -1\n', 2, "result_grace_s: must be >= 0, got -1"),
    ],
)
def test_a_bad_value_names_file_line_and_what_is_wrong(layers, text, line, message):
    path = write(layers["system"] / "hpc.toml", text)
    with pytest.raises(ConfigError) as info:
        load_site("hpc")
    assert str(info.value).startswith(f"{path}:{line}: {message}")


def test_a_slow_filesystem_gets_a_longer_result_grace(layers):
    assert load_site("local").result_grace_s == 5.0
    write(layers["system"] / "lustre.toml", 'scheduler = "slurm"\nresult_grace_s = 30\n')
    assert load_site("lustre").result_grace_s == 30.0


def test_a_malformed_file_reports_file_line_and_column(layers):
    path = write(layers["user"] / "hpc.toml", 'python = "/x"\n[defaults\nwalltime = 5\n')
    with pytest.raises(ConfigError) as info:
        load_site("hpc")
    assert str(info.value) == f"{path}:2:10: not valid TOML: Expected ']' at the end of a table declaration"


def test_a_bad_key_in_the_project_file_points_into_the_project_file(layers):
    path = write(layers["project"] / "hpcbridge.toml",
                 '[sites.hpc]\npython = "/x"\n\n[sites.hpc.partitions.a]\nmax_node = 3\n')
    with pytest.raises(ConfigError) as info:
        load_site("hpc")
    assert str(info.value).startswith(f"{path}:5: unknown key 'max_node' in [partitions.a] (did you mean 'max_nodes'?)")
    write(layers["project"] / "hpcbridge.toml", 'default-site = "hpc"\n')
    with pytest.raises(ConfigError, match=r"hpcbridge.toml:1: unknown key 'default-site' in the project file "
                                          r"\(did you mean 'default_site'\?\)"):
        loading.default_site()


def test_keyword_overrides_are_validated_too(layers):
    write(layers["system"] / "hpc.toml", 'python = "/x"\n')
    with pytest.raises(ConfigError) as info:
        load_site("hpc", max_aray_size=5)
    assert str(info.value).startswith(
        "keyword argument: unknown key 'max_aray_size' in the top level (did you mean 'max_array_size'?)"
    )


def test_defaults_beyond_a_partition_limit_fail_at_load_pointing_at_the_default(layers):
    path = write(layers["system"] / "hpc.toml", """
        [defaults]
        partition = "short"
        walltime = "02:00:00"
        [partitions.short]
        max_walltime = "00:30:00"
        [partitions.long]
        max_walltime = "2-00:00:00"
    """)
    with pytest.raises(ConfigError) as info:
        load_site("hpc")
    assert str(info.value) == (
        f"{path}:2: the defaults do not fit: walltime=02:00:00 exceeds partition 'short' (max 00:30:00); "
        "partitions with 02:00:00: 'long'"
    )


def test_other_whole_site_checks(layers):
    path = write(layers["system"] / "a.toml", "poll_interval_min_s = 10\npoll_interval_max_s = 5\n")
    with pytest.raises(ConfigError, match=rf"^{path}:1: poll_interval_min_s=10 is more than poll_interval_max_s=5$"):
        load_site("a")
    write(layers["system"] / "b.toml", '[partitions.x]\ndefault = true\n[partitions.y]\ndefault = true\n')
    with pytest.raises(ConfigError, match=r":4: partitions 'x', 'y' are all marked default = true; mark one"):
        load_site("b")
    write(layers["system"] / "c.toml", 'transport = "ssh"\n')
    with pytest.raises(ConfigError, match=r"c.toml:1: transport = 'ssh' needs \[ssh\] host"):
        load_site("c")


# -- a real package shipping a site-config through the entry point ----------------------------------------------
def _wheel(folder, name="mycentre_hpcbridge", dist="mycentre_hpcbridge", version="1.0", init=None, entry=None):
    """A wheel of package ``name`` holding mycentre.toml, whose entry point ``mycentre = ENTRY`` (default: the
    package) is in the group hpcbridge.sites; ``init``: its ``__init__.py``."""
    files = {
        f"{name}/__init__.py": init or b'"""Site-configs of My Centre for hpcbridge."""\n',
        f"{name}/mycentre.toml": textwrap.dedent("""\
            description = "My Centre's cluster (from the package)"
            python = "/pkg/python"
            [defaults]
            walltime = "00:20:00"
        """).encode(),
        f"{dist}-{version}.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n".encode(),
        f"{dist}-{version}.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}-{version}.dist-info/entry_points.txt": f"[hpcbridge.sites]\nmycentre = {entry or name}\n".encode(),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}-{version}.dist-info/RECORD,,")
    files[f"{dist}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = os.path.join(folder, f"{dist}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as zf:
        for name_, data in files.items():
            zf.writestr(name_, data)
    return path


def test_an_installed_package_ships_a_site_between_system_and_user_layers(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = str(venv / "bin" / "python")
    wheel = _wheel(str(tmp_path))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True, timeout=120)
    system = tmp_path / "etc"
    write(system / "mycentre.toml", 'python = "/system/python"\nworkdir = "/system/work"\n')
    xdg = tmp_path / "xdg"
    user = write(xdg / "hpcbridge" / "sites" / "mycentre.toml", '[defaults]\naccount = "alice"\n')
    code = (
        "import json; from hpcbridge.sites import load_site; s = load_site('mycentre'); "
        "print(json.dumps({'python': s.python, 'workdir': s.workdir, 'defaults': dict(s.defaults), "
        "'description': s.description, 'origins': dict(s.origins)}))"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": REPO, "HPCBRIDGE_SITES_PATH": str(system),
           "XDG_CONFIG_HOME": str(xdg), "HOME": str(tmp_path)}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    where = "import mycentre_hpcbridge as m, os; print(os.path.dirname(m.__file__))"
    site_packages = subprocess.run([python, "-c", where], capture_output=True, text=True, env=env,
                                   check=True).stdout.strip()
    assert got["python"] == "/pkg/python"  # the package wins over the system directory
    assert got["workdir"] == "/system/work"
    assert got["defaults"] == {"walltime": "00:20:00", "account": "alice"}  # the user layer adds to it
    assert got["origins"]["python"] == f"{site_packages}/mycentre.toml:2 (package mycentre-hpcbridge 1.0)"
    assert got["origins"]["defaults.account"] == f"{user}:2"


BROKEN = "package broken-hpcbridge 1.0: its hpcbridge.sites entry point mycentre = {value!r} "


@pytest.mark.parametrize(("init", "entry", "problem"), [
    (b"import mycentre_helpers  # a dependency that is not installed\n", None,
     "could not be loaded (ModuleNotFoundError: No module named 'mycentre_helpers')"),
    (b"def sites_dir():\n    return '/nonexistent/sites'\n", "broken_hpcbridge:sites_dir",
     "names '/nonexistent/sites', which is not a folder of site-configs"),
], ids=["import-fails", "not-a-folder"])
def test_a_broken_sites_entry_point_is_an_error_naming_the_package_and_nothing_is_submitted(tmp_path, init, entry,
                                                                                           problem):
    wheel = _wheel(str(tmp_path), name="broken_hpcbridge", dist="broken_hpcbridge", init=init, entry=entry)
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), wheel], check=True, capture_output=True, timeout=120)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, str(target)]), "HOME": str(home),
           "XDG_CONFIG_HOME": str(home / ".config"), "HPCBRIDGE_HOME": str(home / ".hpcbridge")}
    env.pop("HPCBRIDGE_SITE", None)
    expected = (BROKEN.format(value=entry or "broken_hpcbridge") + problem
                + "; reinstall a working version of it, or uninstall it (pip uninstall broken-hpcbridge)")

    def run(*argv):
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=str(home),
                              timeout=120)

    # every site, the built-in local one too: its packages' sites would vanish unseen
    p = run("-c", "from hpcbridge import Executor; Executor(site='local')")
    assert p.returncode == 1 and p.stderr.splitlines()[-1] == f"hpcbridge.errors.ConfigError: {expected}"
    p = run("-m", "hpcbridge.cli", "submit", "--", "true")
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.splitlines()[0] == f"hpcbridge: error: {expected}"
    p = run("-m", "hpcbridge.cli", "sites", "check")
    assert p.returncode == 2 and f"hpcbridge: error: {expected}" in p.stderr.splitlines()
    assert os.listdir(home) == []  # no job folder, no registry: nothing was submitted
