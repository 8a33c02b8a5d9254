"""The site-config schema: documented, matching Site, the shipped site-configs valid; and finding a key's line."""

from __future__ import annotations

import dataclasses
import os

import pytest

from hpcbridge.errors import ResourceError
from hpcbridge.sites.loading import load_site_file
from hpcbridge.sites.model import Site
from hpcbridge.sites.schema import SCHEMA, walk
from hpcbridge.sites.source import find_line

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- the schema is documented, and matches Site ----------------------------------------------------------------
def test_every_site_field_has_a_schema_entry_and_every_key_is_documented():
    fields = {f.name for f in dataclasses.fields(Site)} - {"name", "origin", "origins"}
    assert fields == set(SCHEMA)
    with open(os.path.join(REPO, "docs", "site-configs.md")) as fh:
        doc = fh.read()
    missing = [".".join(p) for p, _ in walk(SCHEMA) if f"`{'.'.join(p)}`" not in doc]
    assert not missing, f"docs/site-configs.md does not document: {missing}"


def test_shipped_site_configs_are_valid():
    folder = os.path.join(REPO, "site-configs")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".toml"))
    assert {"example-slurm-gpu.toml", "example-pbspro.toml", "testcluster.toml"} <= set(names)
    for name in names:
        load_site_file(os.path.join(folder, name))
    example = load_site_file(os.path.join(folder, "example-slurm-gpu.toml"))
    with pytest.raises(ResourceError, match=r"^gpus_per_node=8 exceeds partition 'gpu' \(max 4\); "
                                            r"partitions with 8: 'gpu-large'$"):
        example.check_resources(dataclasses.replace(example.default_resources(), gpus_per_node=8))


def test_find_line_handles_headers_dotted_keys_and_inline_tables():
    text = 'a = 1\n[partitions.gpu]\nmax_nodes = 3\n[ "x" . y ]\nz.w = 2\n[env]\nB = { c = 1 }\n'
    assert find_line(text, ("a",)) == 1
    assert find_line(text, ("partitions", "gpu", "max_nodes")) == 3
    assert find_line(text, ("partitions", "gpu", "other")) == 2
    assert find_line(text, ("x", "y", "z", "w")) == 5
    assert find_line(text, ("env", "B", "c")) == 7
    assert find_line(text, ("nothing",)) is None

