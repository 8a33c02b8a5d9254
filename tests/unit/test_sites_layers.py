"""Layers and their merge from text alone: no files, no environment (the pure half of the site-configs)."""

from __future__ import annotations

import sys

import pytest

from hpcbridge.errors import ConfigError
from hpcbridge.sites.layers import (
    KEYWORD,
    builtin_layer,
    file_layer,
    keyword_layer,
    merge_layers,
    parse_project,
    project_layer,
)
from hpcbridge.sites.model import BUILTIN, builtin_local
from hpcbridge.sites.source import parse_toml


def test_later_layers_win_key_by_key_and_origins_name_file_and_line():
    system = file_layer("system", "/etc/hpc.toml", 'python = "/sys"\n[env]\nA = "1"\nB = "2"\n')
    user = file_layer("user", "/home/u/hpc.toml", '[env]\nB = "3"\n')
    site = merge_layers("hpc", [system, user, keyword_layer({"max_array_size": 7})])
    assert site.python == "/sys" and dict(site.env) == {"A": "1", "B": "3"} and site.max_array_size == 7
    assert site.origins["env.A"] == "/etc/hpc.toml:3"
    assert site.origins["env.B"] == "/home/u/hpc.toml:2"
    assert site.origins["max_array_size"] == KEYWORD
    assert site.origins["workdir"] == BUILTIN
    assert site.origin == ("/etc/hpc.toml", "/home/u/hpc.toml")


def test_a_project_table_is_a_layer_pointing_into_the_project_file():
    text = 'default_site = "hpc"\n\n[sites.hpc]\npython = "/proj"\n'
    data = parse_project("/p/hpcbridge.toml", text)
    layer = project_layer("hpc", "/p/hpcbridge.toml", text, data)
    assert layer is not None and layer.where(("python",)) == "/p/hpcbridge.toml:4"
    assert project_layer("other", "/p/hpcbridge.toml", text, data) is None
    with pytest.raises(ConfigError, match=r"^/p/hpcbridge.toml:1: sites must hold one table per site"):
        parse_project("/p/hpcbridge.toml", 'sites = 3\n')


def test_a_layer_is_validated_on_its_own_and_bad_toml_names_line_and_column():
    with pytest.raises(ConfigError, match=r"^/x.toml:2: unknown key 'pyhton' in the top level"):
        file_layer("system", "/x.toml", '\npyhton = "/p"\n')
    with pytest.raises(ConfigError, match=r"^/x.toml:1:9: not valid TOML"):
        parse_toml("python =\n", "/x.toml")


def test_the_built_in_local_site_is_its_built_in_layer():
    assert builtin_local().python == sys.executable
    assert merge_layers("local", [builtin_layer()]).scheduler == builtin_local().scheduler == "local"
    assert builtin_local().origin == ("built-in",) and dict(builtin_local().origins) == {}
