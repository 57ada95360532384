"""Trivial reference predictors for a prepared NYUD tree: the floor any model must beat."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from mmseg.evaluation.metrics import IoUMetric

from cmim_dense.utils.errors import InputError

IGNORE_INDEX = 255


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot read {path}")
    return image


def _files(root: Path, kind: str, split: str) -> list[Path]:
    files = sorted((root / kind / split).glob("*.png"))
    if not files:
        raise InputError(f"no {kind} PNGs in {root / kind / split}")
    return files


def mean_depth_baseline(
    data_root: str | Path, min_depth: float = 0.0, max_depth: float = 10.0
) -> dict:
    """RMSE (m, pooled over valid test pixels) of predicting the mean training depth.

    Depth PNGs are uint16 millimetres with 0 = invalid (tools/prepare_nyud.py).
    """
    root = Path(data_root)
    total, count = 0.0, 0
    for path in _files(root, "depth", "train"):
        depth = _read(path).astype(np.float64) / 1000.0
        valid = (depth > min_depth) & (depth < max_depth)
        total += depth[valid].sum()
        count += int(valid.sum())
    mean = total / max(count, 1)
    sq_err, count = 0.0, 0
    for path in _files(root, "depth", "test"):
        depth = _read(path).astype(np.float64) / 1000.0
        valid = (depth > min_depth) & (depth < max_depth)
        sq_err += ((depth[valid] - mean) ** 2).sum()
        count += int(valid.sum())
    return dict(mean_depth=mean, rmse=float(np.sqrt(sq_err / max(count, 1))))


def majority_class_baseline(data_root: str | Path, num_classes: int) -> dict:
    """mIoU (%) on the test split of predicting the most frequent training class everywhere.

    Like the model's evaluation, IoUs come from mmseg's IoUMetric, and classes absent from
    both prediction and ground truth are left out of the mean.
    """
    root = Path(data_root)
    counts = np.zeros(num_classes, np.int64)
    for path in _files(root, "annotations", "train"):
        labels = _read(path)
        counts += np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=num_classes)[
            :num_classes
        ]
    majority = int(counts.argmax())
    areas = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(4)]
    for path in _files(root, "annotations", "test"):
        label = torch.from_numpy(_read(path).astype(np.int64))
        pred = torch.full_like(label, majority)
        for total, area in zip(
            areas, IoUMetric.intersect_and_union(pred, label, num_classes, IGNORE_INDEX)
        ):
            total += area.double()
    metrics = IoUMetric.total_area_to_metrics(*areas, metrics=["mIoU"])
    return dict(majority_class=majority, mIoU=float(np.nanmean(metrics["IoU"]) * 100))
