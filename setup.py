"""Install cmim_dense: ``pip install -e ".[test]"`` (or ``pip install .``).

The wheel carries the configs as package data at ``cmim_dense/.mim/configs``, where OpenMMLab's
packages keep theirs (mmseg's ``setup.py`` copies its ``configs/`` there at build time). In the
repository ``cmim_dense/.mim/configs`` is a link to ``configs/`` (and ``.mim/model-index.yml``
to ``model-index.yml``), so an editable install and a checkout see the same files as a wheel;
setuptools follows the link when it collects the package data, for the wheel and the sdist.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup


def _installed_version(dist: str) -> str | None:
    """Version of ``dist`` in the *target* interpreter, or None.

    pip builds in an isolated environment, so we ask the target interpreter in
    isolated mode (``-I``), which ignores the build environment's PYTHONPATH.
    """
    probe = (
        f"import importlib.metadata as m\ntry: print(m.version({dist!r}))\nexcept Exception: pass"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, env=env, check=False
    )
    return out.stdout.strip() or None


def _mmcv_requirement() -> str:
    # A user's full (compiled) mmcv must not be overwritten by mmcv-lite: both ship `mmcv/`.
    if _installed_version("mmcv"):
        return "mmcv>=2.0.0rc4,<2.2.0"
    return "mmcv-lite==2.1.0"


# Everything under these patterns (relative to cmim_dense/) ships in the wheel;
# tests/test_packaging.py checks that every file of configs/ is matched.
PACKAGE_DATA = (".mim/configs/**/*.py", ".mim/model-index.yml")

setup(
    name="cmim_dense",
    version="0.1.0",
    description="Binary neural networks with CMIM pretraining, transferred to dense prediction",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cmim_dense", "cmim_dense.*"]),
    package_data={"cmim_dense": [*PACKAGE_DATA]},
    entry_points={"console_scripts": ["cmim-dense = cmim_dense.cli.main:main"]},
    install_requires=[
        "torch>=2.14.1,<2.16",
        "torchvision>=0.29.1,<0.30",
        "mmengine==0.10.7",
        "mmsegmentation==1.2.2",
        _mmcv_requirement(),
        "timm>=1.0",
        "h5py>=3.8",
        "opencv-python-headless>=4.8",
        "openvino>=2025.0",
        "nncf>=2.14",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "ftfy",
        "regex",
        "tqdm",
        "setuptools<81",
    ],
    extras_require={"test": ["pytest>=8", "ruff>=0.6", "import-linter>=2.1"]},
)
