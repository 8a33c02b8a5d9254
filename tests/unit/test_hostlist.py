"""Hostlist expansion: Slurm's grammar, Lightning's known failure cases, and a cross-check against scontrol."""

import shutil
import subprocess

import pytest

from hpcbridge.errors import HostlistError
from hpcbridge.hostlist import expand, expand_unique, tasks_per_node

CASES = [
    ("node[1-3,10]", ["node1", "node2", "node3", "node10"]),
    ("gpu-a[01-04]", ["gpu-a01", "gpu-a02", "gpu-a03", "gpu-a04"]),
    ("node[008-010]", ["node008", "node009", "node010"]),
    ("node[8-010]", ["node8", "node9", "node10"]),  # width comes from the lower bound, as in Slurm
    ("node[01-2]", ["node01", "node02"]),
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),
    ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
    ("a[1-2]b[3-4],c", ["a1b3", "a1b4", "a2b3", "a2b4", "c"]),
    ("my-host-1,other-2,x[1-2]", ["my-host-1", "other-2", "x1", "x2"]),
    ("node1", ["node1"]),
    ("h[0-0]", ["h0"]),
    ("node1,,node2", ["node1", "node2"]),
    ("node[1-2],node1", ["node1", "node2", "node1"]),
    ("", []),
]

# Lightning-AI/pytorch-lightning: #14896 "linux[1,2]" became "linux[1"; #1943 names with dashes;
# #5160 uniquely named nodes (no brackets at all); plus the shapes around them.
LIGHTNING = [
    ("linux[1,2]", ["linux1", "linux2"]),
    ("linux[1,2],linux[4-5]", ["linux1", "linux2", "linux4", "linux5"]),
    ("alpha-beta-gamma,delta-epsilon", ["alpha-beta-gamma", "delta-epsilon"]),
    ("gpu-node-[1-2]", ["gpu-node-1", "gpu-node-2"]),
    ("sc-[1,3]-gpu", ["sc-1-gpu", "sc-3-gpu"]),
    ("frodo,sam,merry,pippin", ["frodo", "sam", "merry", "pippin"]),
    ("node.cluster.org,node2.cluster.org", ["node.cluster.org", "node2.cluster.org"]),
    ("ml-[01-02],login", ["ml-01", "ml-02", "login"]),
]


@pytest.mark.parametrize(("spec", "names"), CASES + LIGHTNING)
def test_expand(spec, names):
    assert expand(spec) == names


@pytest.mark.parametrize(("spec", "names"), CASES + LIGHTNING)
def test_matches_scontrol_show_hostnames(spec, names):
    """Slurm itself agrees (where it accepts the expression; scontrol needs no controller for this)."""
    if shutil.which("scontrol") is None:
        pytest.skip("scontrol is not installed")
    if not spec:
        pytest.skip("Slurm has no answer for an empty hostlist (\"host list is empty\"); test_expand covers it")
    out = subprocess.run(["scontrol", "show", "hostnames", spec], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or "Invalid hostlist" in out.stdout + out.stderr:
        pytest.skip(f"Slurm does not accept {spec!r}: {out.stdout.strip()} {out.stderr.strip()}")
    assert out.stdout.split() == expand(spec)


def test_whitespace_around_items_and_inside_brackets_is_tolerated():
    assert expand(" node[1, 3] , node5 ") == ["node1", "node3", "node5"]


def test_expand_unique_keeps_the_first_occurrence():
    assert expand_unique("b,a[1-2],b,a1") == ["b", "a1", "a2"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("node[1-3", "'[' is not closed"),
        ("node[1-2]]", "']' without '['"),
        ("n[[1]]", "nested '['"),
        ("node[3-1]", "range '3-1' runs backwards"),
        ("node[a-b]", "'a-b' in [a-b] is not a number"),
        ("node[]", "empty entry in []"),
        ("node[1,]", "empty entry in [1,]"),
        ("node[1--2]", "is not a number"),
        ("a b", "holds whitespace"),
        ("x[1-2000000]", "larger than 1000000 hosts"),
        ("a[1-1000]b[1-1000]c[1-2]", "more than 1000000 hosts"),
    ],
)
def test_bad_hostlists_say_what_is_wrong(spec, message):
    with pytest.raises(HostlistError) as info:
        expand(spec)
    assert message in str(info.value) and repr(spec) in str(info.value)


def test_not_a_string():
    with pytest.raises(HostlistError, match="must be a string"):
        expand(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "counts"),
    [("2(x3)", [2, 2, 2]), ("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,2,3", [1, 2, 3]), ("", [])],
)
def test_tasks_per_node(spec, counts):
    assert tasks_per_node(spec) == counts


def test_tasks_per_node_rejects_garbage():
    with pytest.raises(HostlistError, match="is not N or N\\(xK\\)"):
        tasks_per_node("2(xz)")
