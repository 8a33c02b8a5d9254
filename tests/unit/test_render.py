"""Golden batch scripts: what hpcbridge submits is pinned, and every value is shell-quoted exactly once."""

import subprocess

import pytest

from hpcbridge import Executor
from hpcbridge.render import render, sh
from hpcbridge.sites import site_from_mapping


def _site(**over):
    data = {
        "scheduler": "slurm",
        "python": "/opt/py/bin/python",
        "workdir": "/scratch/alice/hpcb",
        "env": {"OMPI_MCA_btl": "self,tcp", "WEIRD": "a b'c $(touch /tmp/pwned) `id` \"q\""},
        "modules": ["gcc/12", "cuda/12.4"],
        "setup": ["ulimit -c 0"],
        "defaults": {"partition": "debug", "walltime": "00:10:00"},
    }
    data.update(over)
    return site_from_mapping("golden", data)


def square(x):
    return x * x


def test_slurm_single_job(fixed, golden):
    ex = Executor(site=_site(), mem_gb=2, cpus_per_task=4, name="train")
    golden("slurm_single.sh", ex.render(square, 3))


def test_slurm_array_gpus_and_extra_directives(fixed, golden):
    ex = Executor(
        site=_site(slurm={"gpu_directive": "gres"}),
        nodes=2,
        tasks_per_node=4,
        gpus_per_node=4,
        walltime="1-00:00:00",
        account="proj42",
        qos="high",
        extra_directives=["--constraint=a100", "--exclusive"],
        array_parallelism=16,
    )
    folder = "/scratch/alice/hpcb/0123456789abcdef"
    golden("slurm_array_gres.sh", ex._render_script(folder, "0123456789abcdef", 200, square, 200))


def test_slurm_gpus_per_node_flavour(fixed):
    text = Executor(site=_site(), gpus_per_node=2).render(square, 1)
    assert "#SBATCH --gpus-per-node=2\n" in text and "--gres" not in text


def test_local_site_script(fixed, golden):
    data = {"scheduler": "local", "python": "/opt/py/bin/python", "workdir": "/w", "local_parallel": 4}
    site = site_from_mapping("golden-local", data)
    golden("local.sh", Executor(site=site).render(square, 1))


def test_local_site_script_with_what_it_applies(fixed, golden):
    """The local site's walltime, memory, CPUs and name reach its runner as #LOCAL directives."""
    data = {"scheduler": "local", "python": "/opt/py/bin/python", "workdir": "/w"}
    ex = Executor(site=site_from_mapping("golden-local", data), walltime="01:30:00", mem_gb="1.5GB", cpus_per_task=2,
                  tasks_per_node=2, name="debug-run", array_parallelism=3, launcher="torchrun")
    folder = "/w/0123456789abcdef"
    golden("local_limits.sh", ex._render_script(folder, "0123456789abcdef", 5, square, 5))


def test_env_values_reach_the_job_exactly(fixed, tmp_path):
    """Run the rendered environment lines in a real bash: the odd value arrives byte for byte, nothing runs."""
    text = Executor(site=_site()).render(square, 1)
    lines = [line for line in text.splitlines() if line.startswith("export ")]
    script = "\n".join(lines) + '\nprintf %s "$WEIRD"\n'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == "a b'c $(touch /tmp/pwned) `id` \"q\""


def test_sh_filter_quotes_lists_word_by_word():
    assert sh(["python", "-c", "print('hi there')"]) == "python -c 'print('\"'\"'hi there'\"'\"')'"
    assert sh(42) == "42"


def test_strict_undefined_names_the_missing_variable(tmp_path):
    (tmp_path / "t.j2").write_text("{{ missing_thing }}")
    with pytest.raises(Exception, match="'missing_thing' is undefined"):
        render("t.j2", {}, [str(tmp_path)])


def test_site_template_overrides_the_packaged_one(fixed, tmp_path):
    (tmp_path / "slurm.sh.j2").write_text("#!/bin/bash\n# custom for {{ site }}\n{{ command | sh }}\n")
    text = Executor(site=_site(templates=[str(tmp_path)])).render(square, 1)
    assert text == (
        "#!/bin/bash\n# custom for golden\n/opt/py/bin/python -u -m hpcbridge.worker "
        "/scratch/alice/hpcb/0123456789abcdef\n"
    )
