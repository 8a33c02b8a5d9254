"""Shared test set-up: every test gets its own registry (HPCBRIDGE_HOME); test modules are pickled by value,
since the cluster side cannot import them by name."""

import sys

import cloudpickle
import pytest


def pytest_collection_modifyitems(session, config, items):
    for module in {item.module for item in items if getattr(item, "module", None) is not None}:
        cloudpickle.register_pickle_by_value(sys.modules[module.__name__])


@pytest.fixture(autouse=True)
def _private_registry(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HPCBRIDGE_HOME", str(tmp_path_factory.mktemp("hpcbridge-home")))


@pytest.fixture(autouse=True)
def _no_default_site_from_the_caller(monkeypatch):
    """``Executor()`` without ``site=`` means ``local`` in the tests, whatever $HPCBRIDGE_SITE the run was started
    with (a test that wants one sets it)."""
    monkeypatch.delenv("HPCBRIDGE_SITE", raising=False)
