"""Every config under configs/ loads, builds its model and names only registered components;
the full-size NYUD-v2 config trains 2 iterations on CPU on a generated tree at 60x80.

Datasets are not built here (they need the real data); their configs are checked instead.
"""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.model import BaseModel, revert_sync_batchnorm
from mmengine.registry import FUNCTIONS
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

from cmim_dense.registry import (
    DATA_SAMPLERS,
    DATASETS,
    HOOKS,
    LOOPS,
    METRICS,
    MODELS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
    PARAM_SCHEDULERS,
    TRANSFORMS,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CONFIG_FILES = sorted(p for p in CONFIGS.rglob("*.py") if "_base_" not in p.parts)
NYUD_CONFIG = CONFIGS / "nyud_deeplab_bin_r18.py"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_every_config_is_found():
    groups = {p.relative_to(CONFIGS).parts[0] for p in CONFIG_FILES}
    assert {"demo", "pretrain", NYUD_CONFIG.name} <= groups
    assert len(CONFIG_FILES) >= 40


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """``teacher_file(teacher_cfg, num_classes)``: a random teacher in the layout of the file
    the config names (a MoCo v2 checkpoint: the timm network with its MLP projection head as
    ``fc.0``/``fc.2``, keys under the prefix), written once per architecture."""
    root = tmp_path_factory.mktemp("teachers")
    made = {}

    def make(teacher: dict, num_classes: int) -> str:
        key = (teacher["arch"], teacher.get("mlp_hidden"), num_classes, teacher.get("prefix", ""))
        if key not in made:
            arch, hidden, classes, prefix = key
            net = timm.create_model(arch, pretrained=False, num_classes=classes)
            if hidden:
                net.fc = nn.Sequential(
                    nn.Linear(net.num_features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
                )
            path = root / f"teacher{len(made)}.pth"
            torch.save({"state_dict": {prefix + k: v for k, v in net.state_dict().items()}}, path)
            made[key] = str(path)
        return made[key]

    return make


def _check_registered(cfg: Config) -> None:
    """Every component type the Runner will build is in the (mmseg-scoped) registries."""

    def registered(registry, entry: dict, default: str | None = None) -> None:
        assert isinstance(entry, dict), entry
        name = entry.get("type", default)
        assert registry.get(name) is not None, f"{registry.name}: {name!r} is not registered"

    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        if loader is None:
            continue
        dataset = loader.dataset
        while dataset is not None:  # dataset wrappers hold the real one under ``dataset``
            registered(DATASETS, dataset)
            for step in dataset.get("pipeline", []):
                registered(TRANSFORMS, step)
            dataset = dataset.get("dataset")
        registered(DATA_SAMPLERS, loader.sampler)
        if "collate_fn" in loader:
            registered(FUNCTIONS, loader.collate_fn)
        if split != "train":
            evaluators = cfg[f"{split}_evaluator"]
            for metric in evaluators if isinstance(evaluators, list) else [evaluators]:
                registered(METRICS, metric)
            registered(LOOPS, cfg[f"{split}_cfg"])
    registered(LOOPS, cfg.train_cfg)
    for hook in [*cfg.get("custom_hooks", []), *cfg.default_hooks.values()]:
        registered(HOOKS, hook)
    registered(OPTIM_WRAPPERS, cfg.optim_wrapper, "OptimWrapper")
    registered(OPTIMIZERS, cfg.optim_wrapper.optimizer)
    for scheduler in cfg.param_scheduler:
        registered(PARAM_SCHEDULERS, scheduler)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_and_builds(path: Path, teacher_file):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == "cmim_dense"
    _check_registered(cfg)
    teacher = cfg.model.get("teacher")
    if teacher:  # the real teacher file is data, like the datasets: a stand-in of its layout
        teacher.checkpoint = teacher_file(teacher, cfg.model.num_classes)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    assert isinstance(model, BaseModel)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


# -- the full-size NYUD-v2 config, reduced input size -----------------------------------------


def _index(pipeline: list, name: str) -> int:
    (index,) = [i for i, step in enumerate(pipeline) if step["type"] == name]
    return index


def _small_input_options(data_root: Path, size: tuple[int, int]) -> list[str]:
    """``--cfg-options`` that point the NYUD config at ``data_root`` and scale its pipelines to
    ``size`` = (h, w), leaving the model alone."""
    h, w = size
    cfg = Config.fromfile(NYUD_CONFIG)
    train = cfg.train_dataloader.dataset.pipeline
    test = cfg.test_dataloader.dataset.pipeline
    options = [f"{split}_dataloader.dataset.data_root={data_root}" for split in ("train", "val")]
    options += [
        f"train_dataloader.dataset.pipeline.{_index(train, 'Resize')}.scale=({w},{h})",
        f"val_dataloader.dataset.pipeline.{_index(test, 'Resize')}.scale=({w},{h})",
        f"model.data_preprocessor.size=({h},{w})",
    ]
    loader = ["batch_size=2", "num_workers=0", "persistent_workers=False"]
    options += [f"{split}_dataloader.{kv}" for split in ("train", "val") for kv in loader]
    return options


def test_full_size_nyud_config_trains_two_iterations(synth_nyud_tree, tmp_path):
    work_dir = tmp_path / "work"
    options = _small_input_options(synth_nyud_tree, (60, 80))
    options += [
        "train_cfg.max_iters=2",
        "train_cfg.val_begin=3",
        "default_hooks.logger.interval=1",
        "default_hooks.checkpoint.interval=2",
    ]
    main = runpy.run_path(str(REPO / "tools" / "train.py"), run_name="tools_train")["main"]
    argv = [str(NYUD_CONFIG), "--work-dir", str(work_dir), "--cfg-options", *options]
    assert main(argv) == 0

    (run,) = [p for p in work_dir.iterdir() if (p / "vis_data").is_dir()]
    lines = (run / "vis_data" / "scalars.json").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(
        math.isfinite(r["seg.loss_ce"]) and math.isfinite(r["depth.loss_silog"]) for r in records
    )
    state = _load_checkpoint(str(work_dir / "iter_2.pth"))["state_dict"]
    # the full-size model: ResNet-18 widths, 128-channel ASPP (mmseg's ResNet-18 width), 40 classes
    assert state["backbone.stages.3.1.1.conv.weight"].shape == (512, 512, 3, 3)
    assert state["seg_head.bottleneck.conv.weight"].shape[:2] == (128, 5 * 128)
    assert state["seg_head.conv_seg.weight"].shape[0] == 40
    assert state["depth_head.conv_seg.weight"].shape[0] == 1
