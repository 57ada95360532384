"""Export from a config: build the model, load the checkpoint, read real frames, and hand all of
it to :func:`cmim_dense.deploy.export.export_model` (which takes built models and arrays only)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config

from cmim_dense.deploy.export import check_out_dir, export_model
from cmim_dense.deploy.fold import NotExportableError
from cmim_dense.deploy.runtime import identity
from cmim_dense.engine.config import build_model, load_config
from cmim_dense.models.dense import MultiTaskDense
from cmim_dense.registry import DATASETS
from cmim_dense.utils.errors import InputError

# Real test frames on which the export measures the agreement with PyTorch, where they exist.
CHECK_FRAMES = 4
# Loading steps that read ground truth: frames for the IR need the image only.
_ANNOTATION_LOADERS = {"LoadAnnotations", "LoadDepthAnnotation"}


def default_input_size(cfg: Config) -> tuple[int, int]:
    """The size a config's model sees: a dense model's crop size, else 32 (CIFAR stem) or 224."""
    size = cfg.model.get("data_preprocessor", {}).get("size")
    if size:
        return tuple(size)
    return (32, 32) if cfg.model.get("backbone", {}).get("stem") == "cifar" else (224, 224)


def config_frames(
    cfg: Config, model: MultiTaskDense, split: str, count: int, size: tuple[int, int]
) -> tuple[list[str], np.ndarray]:
    """The first ``count`` images of the config's ``split`` (``'train'`` or ``'test'``) as the
    model sees them at test time: the test pipeline's resize, then the model's data
    preprocessor (BGR to RGB, mean/std), then a bilinear resize to ``size`` (H, W) where the
    pipeline gives another size.

    Returns:
        (image paths, (N, 3, H, W) float32 array), N = min(count, frames in the split).

    Raises:
        InputError: the split's image folder is missing or empty (the dataset names it).
    """
    loader = cfg.get(f"{split}_dataloader") or {}
    if not loader.get("dataset"):
        raise InputError(f"the config has no {split}_dataloader.dataset to read frames from")
    pipeline = cfg.get("test_pipeline") or cfg.test_dataloader.dataset.pipeline
    pipeline = [step for step in pipeline if step["type"] not in _ANNOTATION_LOADERS]
    dataset_cfg = dict(loader["dataset"], pipeline=pipeline, test_mode=True)
    # The image folder alone: calibration and agreement need no ground truth.
    prefix = dict(dataset_cfg.get("data_prefix") or {})
    dataset_cfg["data_prefix"] = dict(img_path=prefix.get("img_path", ""))
    dataset = DATASETS.build(dataset_cfg)
    paths, frames = [], []
    for i in range(min(count, len(dataset))):
        item = dataset[i]
        with torch.no_grad():
            batch = model.data_preprocessor(
                dict(inputs=[item["inputs"]], data_samples=[item["data_samples"]]), False
            )
        x = batch["inputs"].float()
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size, mode="bilinear", align_corners=False)
        paths.append(item["data_samples"].img_path)
        frames.append(x[0].numpy())
    return paths, np.stack(frames)


def _split_exists(cfg: Config, split: str) -> bool:
    dataset = (cfg.get(f"{split}_dataloader") or {}).get("dataset") or {}
    folder = (dataset.get("data_prefix") or {}).get("img_path")
    if not folder:
        return False
    root = dataset.get("data_root") or ""
    path = Path(root) / folder
    return path.is_dir() and any(path.iterdir())


def export_config(
    config: str,
    checkpoint: str | None,
    out_dir: str | os.PathLike,
    input_size: tuple[int, int] | None = None,
    cfg_options: dict | None = None,
    int8_heads: bool = False,
    calib_frames: int = 8,
) -> dict:
    """Build ``config``'s model, load ``checkpoint`` strictly (none: the config's own
    initialisation) and :func:`~cmim_dense.deploy.export.export_model` it with a static input
    of ``input_size`` (default: :func:`default_input_size`).

    A dense model is also compared with PyTorch on up to :data:`CHECK_FRAMES` frames of the test
    split where they exist. ``int8_heads``: quantize its heads on ``calib_frames`` frames of the
    train split (:func:`config_frames`). ``export.json`` records the identity (sha256 of the
    checkpoint and of the resolved config, :func:`~cmim_dense.deploy.runtime.identity`) and
    the calibration frames.

    Returns:
        The ``export.json`` record.

    Raises:
        InputError: bad sizes or counts, no train images for calibration (names the folder).
    """
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
        raise InputError(f"--size must be two positive integers H W, got {list(input_size)}")
    if int8_heads and calib_frames < 1:
        raise InputError(f"--calib-frames must be a positive integer, got {calib_frames}")
    cfg = load_config(config, cfg_options)
    check_out_dir(Path(out_dir))
    model = build_model(cfg, checkpoint, init_weights=checkpoint is None).eval()
    if not hasattr(model, "backbone"):
        raise NotExportableError(f"{config}: the model has no backbone to export")
    dense = isinstance(model, MultiTaskDense)
    if int8_heads and not dense:
        raise InputError(f"{config}: --int8-heads quantizes a dense model's heads; it has none")
    size = tuple(input_size) if input_size else default_input_size(cfg)
    binarizer = cfg.model.get("backbone", {}).get("binarizer")
    info = dict(
        config=str(config),
        checkpoint=str(checkpoint) if checkpoint else None,
        identity=identity(cfg, checkpoint),
        binarizer=binarizer.get("type") if isinstance(binarizer, dict) else binarizer,
    )
    calibration = frames = None
    if int8_heads:
        paths, calibration = config_frames(cfg, model, "train", calib_frames, size)
        info["calibration"] = dict(split="train", count=len(paths), frames=paths)
    if dense and _split_exists(cfg, "test"):
        _, frames = config_frames(cfg, model, "test", CHECK_FRAMES, size)
    return export_model(model, out_dir, size, info, frames=frames, calibration=calibration)
