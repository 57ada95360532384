"""Shared test set-up."""

import pytest
from mmengine.registry import init_default_scope

import cmim_dense  # noqa: F401  (shims and registries before any test imports mmseg)


@pytest.fixture(autouse=True)
def mmseg_default_scope():
    """Every project config runs with ``default_scope='mmseg'``; so does every test.

    A Runner built by an earlier test leaves its own default scope current, which would
    make later registry builds look in the wrong registry.
    """
    init_default_scope("mmseg")
    yield
