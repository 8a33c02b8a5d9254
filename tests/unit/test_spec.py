import pytest

from hpcbridge.errors import ResourceError
from hpcbridge.spec import Resources, parse_mem_gb, parse_walltime, resources_from


@pytest.mark.parametrize(
    "value, seconds",
    [
        (90, 5400),
        (0.5, 30),
        ("90", 5400),
        ("05:30", 330),
        ("01:30:00", 5400),
        ("2-00", 172800),
        ("1-02:03", 93780),
        ("1-02:03:04", 93784),
        ("48:00:00", 172800),
    ],
)
def test_walltime_grammar_follows_slurm(value, seconds):
    assert parse_walltime(value) == seconds


@pytest.mark.parametrize("value", ["abc", "1:2:3:4", "10:75", "01:61:00", "", "-5", True, None, [1]])
def test_nonsense_walltime_says_what_is_accepted(value):
    with pytest.raises(ResourceError, match=r"is not a duration; give minutes \(90\), 'MM:SS', 'HH:MM:SS'"):
        parse_walltime(value)


@pytest.mark.parametrize("value", [0, -3, "0", "00:00:00", float("inf")])
def test_zero_or_negative_walltime_is_refused(value):
    with pytest.raises(ResourceError, match="must be more than 0 minutes"):
        parse_walltime(value)


@pytest.mark.parametrize("value, gb", [(4, 4.0), ("512MB", 0.5), ("2G", 2.0), ("1.5TB", 1536.0), ("2048m", 2.0)])
def test_memory_units(value, gb):
    assert parse_mem_gb(value) == gb


@pytest.mark.parametrize("value", ["lots", "4 GiB", "-1", [], True])
def test_nonsense_memory_is_refused(value):
    with pytest.raises(ResourceError, match="is not a memory size"):
        parse_mem_gb(value)


def test_unknown_resource_suggests_the_closest_and_lists_all():
    with pytest.raises(ResourceError) as info:
        resources_from(Resources(), {"gpus_per_nod": 2})
    msg = str(info.value)
    assert msg.startswith("unknown resource 'gpus_per_nod' (did you mean 'gpus_per_node'?); valid resources: nodes,")
    assert "walltime" in msg and "mem_gb" in msg


def test_resources_are_normalised_and_merged():
    base = resources_from(Resources(), {"partition": "debug", "walltime": "00:10:00"})
    r = resources_from(base, {"nodes": 2, "mem_gb": "1536MB", "walltime": 5})
    assert (r.partition, r.nodes, r.mem_mb, r.walltime_s, r.walltime_hms) == ("debug", 2, 1536, 300, "00:05:00")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nodes": 0}, "nodes=0 must be a whole number >= 1"),
        ({"cpus_per_task": 1.5}, "cpus_per_task=1.5 must be a whole number >= 1"),
        ({"gpus_per_node": -1}, "gpus_per_node=-1 must be a whole number >= 0"),
        ({"partition": "gpu; rm -rf /"}, "partition='gpu; rm -rf /' must be letters, digits"),
        ({"extra_directives": ["constraint=a100"]}, "must be one scheduler option such as '--constraint=a100'"),
        ({"extra_directives": ["--a\n#SBATCH --b"]}, "must be one scheduler option"),
        ({"launcher": "mpiexec"}, "launcher='mpiexec' is not known"),
    ],
)
def test_bad_values_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ResourceError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resources_from(Resources(), kwargs)


@pytest.mark.parametrize("word, suggestion", [("cpus", "cpus_per_task"), ("gpus", "gpus_per_node"), ("mem", "mem_gb")])
def test_short_names_suggest_the_full_resource(word, suggestion):
    with pytest.raises(ResourceError, match=rf"unknown resource '{word}' \(did you mean '{suggestion}'\?\)"):
        resources_from(Resources(), {word: 1})


def test_integer_like_values_are_accepted_and_lists_are_required():
    class Int:
        def __index__(self):
            return 4

    assert resources_from(Resources(), {"nodes": Int()}).nodes == 4
    with pytest.raises(ResourceError, match=r"extra_directives=5 must be a list of scheduler options"):
        resources_from(Resources(), {"extra_directives": 5})
