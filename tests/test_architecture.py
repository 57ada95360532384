"""The layout's promises: a cheap ``import cmim_dense``, lazy registration, fast ``--help``,
one config -> model path, and small modules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cmim_dense"
HEAVY = ("torch", "mmengine", "mmseg", "openvino", "matplotlib", "sklearn", "h5py", "timm")


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_cmim_dense_imports_nothing_heavy():
    loaded = _fresh(
        "import json, sys, cmim_dense\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert loaded == []


@pytest.mark.parametrize("command", ["train", "test", "export", "demo", "sweep", "benchmark"])
def test_help_parses_before_importing_the_stack(command):
    result = _fresh(
        "import contextlib, io, json, sys\n"
        "from cmim_dense.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main([{command!r}, '--help'])\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        f"print(json.dumps(dict(code=code, text=out.getvalue(), "
        f"heavy=[m for m in {HEAVY!r} if m in sys.modules])))"
    )
    assert result["code"] == 0
    assert result["text"].startswith(f"usage: cmim-dense {command}")
    assert result["heavy"] == []


def test_a_config_builds_without_importing_project_modules_first():
    """The registry's ``locations`` import the project's modules when the scope builds."""
    result = _fresh(
        "import json\n"
        "from mmengine.config import Config\n"
        "from mmengine.registry import init_default_scope\n"
        "from mmseg.registry import MODELS\n"
        "import cmim_dense.engine.config as c\n"
        "cfg = Config.fromfile(c.resolve_config('nyud_deeplab_bin_r18'))\n"
        "init_default_scope(cfg.default_scope)\n"
        "model = MODELS.build(cfg.model)\n"
        "print(json.dumps([type(model).__name__, type(model.backbone).__name__]))"
    )
    assert result == ["MultiTaskDense", "BinaryResNet"]


def test_unknown_command_is_one_line_and_exit_2(capsys):
    from cmim_dense.cli.main import main

    assert main(["trian"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown command 'trian'")


def test_bad_argument_is_one_line_and_exit_2(capsys):
    from cmim_dense.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["export", "cfg.py", "--out", "o", "--size", "0", "8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: cmim-dense export: argument --size: must be >= 2, got 0 (see --help)"]


def test_one_config_to_model_path():
    """Only engine/config.py builds ``cfg.model`` (the Runner builds its own in train/test)."""
    pattern = re.compile(r"MODELS\.build\((cfg\.model|model_cfg)")
    builders = [
        str(path.relative_to(REPO))
        for path in PACKAGE.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert builders == ["cmim_dense/engine/config.py"]


def test_nothing_derives_the_repository_path():
    """Configs are found through the package (engine.config.resolve_config), not the checkout."""
    offenders = [
        str(path.relative_to(REPO))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"parents\[\d\]\s*/\s*['\"](configs|tools)", path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
