"""The package as pip installs it: the configs ship as package data at cmim_dense/.mim/configs
(where OpenMMLab packages keep theirs), ``cmim-dense`` is a console entry point, and a built
wheel, installed away from the repository, finds and loads its configs from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "configs").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts
)
ENTRY_POINT = "cmim-dense = cmim_dense.cli.main:main"


def _clean_env() -> dict:
    """The environment without PYTHONPATH, so that a child sees only what it is given."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def distribution():
    """setup.py's distribution, configured but not built (setuptools' own reading of it)."""
    # setuptools first: its distutils, not the standard library's, must run setup.py
    import setuptools  # noqa: F401, I001
    from distutils.core import run_setup

    cwd = os.getcwd()
    os.chdir(REPO)  # setup.py reads README.md relative to its folder, as pip runs it
    try:
        return run_setup("setup.py", stop_after="config")
    finally:
        os.chdir(cwd)


def test_package_data_is_every_config(distribution):
    """What setuptools collects as package data is exactly configs/ and the model index."""
    build_py = distribution.get_command_obj("build_py")
    build_py.ensure_finalized()
    data = {
        str(Path(src_dir, name).relative_to("cmim_dense"))
        for _, src_dir, _, names in build_py.data_files
        for name in names
    }
    mim = {name.removeprefix(".mim/") for name in data}
    assert mim == {*CONFIG_FILES, "model-index.yml"}
    assert len(CONFIG_FILES) >= 60


def test_package_folders_point_at_the_repository_files():
    """In a checkout and an editable install, the package's .mim files are the repository's."""
    mim = REPO / "cmim_dense" / ".mim"
    assert (mim / "configs").resolve() == (REPO / "configs").resolve()
    assert (mim / "model-index.yml").resolve() == (REPO / "model-index.yml").resolve()


def test_console_entry_point(distribution):
    assert distribution.entry_points["console_scripts"] == [ENTRY_POINT]


def test_module_help_lists_every_command():
    from cmim_dense.cli.main import COMMANDS

    result = subprocess.run(
        [sys.executable, "-m", "cmim_dense.cli.main", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cmim-dense COMMAND")
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)


@pytest.mark.slow
def test_wheel_loads_its_configs_from_any_folder(tmp_path):
    """Build the wheel (no isolation, no dependencies), install its files into a folder of
    their own, and from an empty folder resolve a config by name and load it with its
    ``_base_`` chain; the entry point is in the wheel's metadata."""
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", "__pycache__", "work_dirs", "data", ".*_cache"
        ),
    )
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        env=_clean_env(),
    )
    (wheel,) = wheels.glob("cmim_dense-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert ENTRY_POINT in archive.read(entry_points).decode().splitlines()
    shipped = {
        n.removeprefix("cmim_dense/.mim/") for n in names if n.startswith("cmim_dense/.mim/")
    }
    assert shipped == {*CONFIG_FILES, "model-index.yml"}

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = (
        "import json, cmim_dense\n"
        "from cmim_dense.engine.config import load_config, resolve_config\n"
        "cfg = load_config('nyud_deeplab_bin_r18')\n"
        "print(json.dumps(dict(package=cmim_dense.__file__, config=resolve_config("
        "'nyud_deeplab_bin_r18'), backbone=cfg.model.backbone.type, "
        "crop=list(cfg.crop_size), scope=cfg.default_scope)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=empty,
        env={**_clean_env(), "PYTHONPATH": str(site)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    assert Path(found["package"]).is_relative_to(site)
    assert found["config"] == str(
        site / "cmim_dense" / ".mim" / "configs" / "nyud_deeplab_bin_r18.py"
    )
    assert not Path(found["config"]).is_symlink()
    # from _base_/models and _base_/datasets: the inheritance chain resolved inside the wheel
    assert found["backbone"] == "BinaryResNet"
    assert found["crop"] == [480, 640]
    assert found["scope"] == "cmim_dense"


def test_mmseg_init_model_builds_the_main_config():
    """mmseg's own entry point builds the main config in the project's scope; it sets
    ``model.pretrained = None`` as for its segmentors, which MultiTaskDense accepts."""
    from mmseg.apis import init_model

    from cmim_dense.engine.config import resolve_config
    from cmim_dense.models.dense import MultiTaskDense

    model = init_model(resolve_config("nyud_deeplab_bin_r18"), device="cpu")
    assert isinstance(model, MultiTaskDense)
    assert not model.training


def test_model_pretrained_is_the_backbones(tmp_path):
    from cmim_dense.engine.config import build_model
    from cmim_dense.utils.errors import InputError

    weights = str(tmp_path / "backbone.pth")
    model = build_model("nyud_deeplab_bin_r18", cfg_options={"model.pretrained": weights})
    assert model.backbone.init_cfg == {
        "type": "Pretrained",
        "checkpoint": weights,
        "prefix": "backbone.",
    }
    options = {"model.pretrained": weights, "model.backbone.pretrained": weights}
    with pytest.raises(InputError, match="not both"):
        build_model("nyud_deeplab_bin_r18", cfg_options=options)
