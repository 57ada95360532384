"""Shared test set-up."""

import logging
from pathlib import Path

import pytest
import torch
from mmengine.registry import init_default_scope

import cmim_dense.registry  # noqa: F401  (shims before any test imports mmseg)
from cmim_dense.nyud_io.convert import prepare_nyud
from cmim_dense.nyud_io.synth import generate_synth_nyud

# The tools run in-process here, many per session: mmengine's loggers keep a stream handler on
# the sys.stdout/stderr of the test that created them, which pytest's capture has closed by the
# next one. Writing there prints "--- Logging error ---" and a traceback into the next test's
# captured stderr; the tools' own one-line errors are what the tests read.
logging.raiseExceptions = False


# Modules that run OpenVINO inside the test process. On this stack a pytest process that had run
# OpenVINO crashed (SIGSEGV) later in unrelated tests, not reproducibly; CI therefore runs these
# in a pytest process of their own (README, Tests: `-m openvino` and `-m "not openvino"`).
OPENVINO_MODULES = {
    "test_deploy.py",
    "test_deploy_whole.py",
    "test_infer.py",
    "test_demo.py",
    "test_sweep.py",
}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.path.name in OPENVINO_MODULES:
            item.add_marker(pytest.mark.openvino)


@pytest.fixture(autouse=True)
def project_default_scope():
    """Every project config runs with ``default_scope='cmim_dense'``; so does every test.

    A Runner built by an earlier test leaves its own default scope current, which would
    make later registry builds look in the wrong registry.
    """
    init_default_scope("cmim_dense")
    yield


@pytest.fixture(scope="session")
def synth_nyud_tree(tmp_path_factory) -> Path:
    """A prepared 40-class NYUD-v2 tree of 16 generated 60x80 frames (9 train, 7 test).

    ``generate_synth_nyud`` writes the official ``.mat`` files and ``prepare_nyud`` converts
    them as ``tools/prepare_nyud.py`` does; built once per session, read-only for tests.
    """
    root = tmp_path_factory.mktemp("synth_nyud")
    raw = generate_synth_nyud(root / "raw", 16, seed=0, size=(60, 80), crop_size=8, progress=False)
    return prepare_nyud(raw.labeled, raw.splits, raw.mapping, root / "nyud", progress=False).out


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op torch thread for a module's tests, restored afterwards.

    On a loaded 2-core machine, two OpenMP threads wait on each other: small convolutions
    run up to 100x slower than on one thread. Use with
    ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
