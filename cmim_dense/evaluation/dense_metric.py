"""One mmengine metric for NYUD-v2 semantic segmentation and depth estimation.

Segmentation reuses mmseg's :class:`~mmseg.evaluation.metrics.IoUMetric` maths
(``intersect_and_union`` per image, ``total_area_to_metrics`` at the end). Depth is computed
here because mmseg's ``DepthMetric`` only averages per image and its ``depth_metrics``
argument crashes in mmseg 1.2.2 (an ``isinstance`` bug); we need the pooled reduction too.

Depth metrics, over the valid pixels ``min_depth < gt < max_depth`` (metres) of each image,
with ``p`` the prediction clamped below at ``min_pred`` (so logs are finite) and ``g`` the
ground truth, both in metres:

* ``rmse``         = sqrt(mean((p - g)^2))                    [m, lower is better]
* ``neg_log_rmse`` = -ln(rmse), natural log of the RMSE in metres, the x axis of the CMIM
  paper's Fig. 5 (higher is better); always derived from the ``rmse`` reported next to it.
* ``abs_rel``      = mean(|p - g| / g)
* ``sq_rel``       = mean((p - g)^2 / g)                      [m]
* ``rmse_log``     = sqrt(mean((ln p - ln g)^2))
* ``log10``        = mean(|log10 p - log10 g|)
* ``delta{k}``     = 100 * mean(max(p / g, g / p) < 1.25^k), k = 1, 2, 3   [%]

Two reductions: ``pooled`` takes every mean above over all valid pixels of the split at once;
``per_image`` computes each metric per image and averages over images (mmseg's
``DepthMetric``; images without valid pixels are skipped). The chosen ``depth_reduction``
is reported under the plain names, the other one under a ``_per_image`` / ``_pooled``
suffix. Per-image sums are kept in float64, so the pooled result does not depend on how
the split is batched.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.evaluation.metrics import IoUMetric
from prettytable import PrettyTable

from cmim_dense.registry import METRICS
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import write_json_atomic

# Order of the per-image sufficient statistics kept by ``_depth_stats``.
_DEPTH_STATS = (
    "n",
    "sq_err",
    "abs_rel",
    "sq_rel",
    "sq_log_err",
    "log10_err",
    "delta1",
    "delta2",
    "delta3",
)
DEPTH_METRICS = (
    "rmse",
    "neg_log_rmse",
    "abs_rel",
    "sq_rel",
    "rmse_log",
    "log10",
    "delta1",
    "delta2",
    "delta3",
)
_REDUCTIONS = ("pooled", "per_image")


@METRICS.register_module()
class DenseMetric(BaseMetric):
    """Segmentation (mIoU, per-class IoU, aAcc) and depth (RMSE, -ln RMSE, ...) in one metric.

    Each task is optional: a sample contributes to segmentation if it has both
    ``pred_sem_seg`` and ``gt_sem_seg``, and to depth if it has both ``pred_depth_map`` and
    ``gt_depth_map``, so single-task models work unchanged. Inputs are the dicts that
    mmengine's ``Evaluator`` makes with ``SegDataSample.to_dict()``:
    ``sample['pred_sem_seg']['data']`` (1, H, W) int class ids, ``gt_sem_seg`` likewise
    with ``ignore_index`` for void; ``pred_depth_map`` / ``gt_depth_map`` (1, H, W) float in
    metres, gt 0 = invalid.

    Returned keys (segmentation values in %): ``mIoU``, ``mAcc``, ``aAcc``, ``IoU.<class>``
    (class names from ``dataset_meta['classes']``; NaN for a class absent from both
    prediction and ground truth, ignored by ``mIoU``), then the depth metrics of the module
    docstring under plain names and the other reduction with a suffix.

    Args:
        ignore_index: ground-truth label excluded from segmentation. Defaults to 255.
        min_depth: valid ground truth is strictly greater than this (m). Defaults to 0.
        max_depth: valid ground truth is strictly less than this (m). Defaults to 10.
        min_pred: predictions are clamped below to this (m) so the log metrics are finite.
        depth_reduction: ``'pooled'`` (default) or ``'per_image'``; see the module docstring.
        out_file: if given, all metrics are also written there as JSON (atomically).
        collect_device, prefix: as in :class:`mmengine.evaluator.BaseMetric`.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        min_depth: float = 0.0,
        max_depth: float = 10.0,
        min_pred: float = 1e-3,
        depth_reduction: str = "pooled",
        out_file: str | None = None,
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if depth_reduction not in _REDUCTIONS:
            raise InputError(
                f"depth_reduction must be one of {_REDUCTIONS}, got {depth_reduction!r}"
            )
        if not 0 <= min_depth < max_depth:
            raise InputError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.ignore_index = ignore_index
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.min_pred = min_pred
        self.depth_reduction = depth_reduction
        self.out_file = out_file

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Store, per sample, the IoU areas and the depth sums (one result per sample)."""
        for sample in data_samples:
            result = {"seg": None, "depth": None}
            if "pred_sem_seg" in sample and "gt_sem_seg" in sample:
                result["seg"] = self._seg_areas(sample)
            if "pred_depth_map" in sample and "gt_depth_map" in sample:
                result["depth"] = self._depth_stats(sample)
            self.results.append(result)

    def _num_classes(self) -> int:
        if not self.dataset_meta or "classes" not in self.dataset_meta:
            raise InputError(
                "DenseMetric needs dataset_meta['classes'] for segmentation; "
                "set metric.dataset_meta or evaluate through a Runner/Evaluator with a dataset"
            )
        return len(self.dataset_meta["classes"])

    def _seg_areas(self, sample: dict) -> tuple[torch.Tensor, ...]:
        """IoUMetric areas of one image, as float64 (float32 sums lose counts past 2^24)."""
        num_classes = self._num_classes()
        pred = sample["pred_sem_seg"]["data"].squeeze()
        label = sample["gt_sem_seg"]["data"].squeeze().to(pred)
        if pred.shape != label.shape:
            raise InputError(
                f"pred_sem_seg {tuple(pred.shape)} and gt_sem_seg {tuple(label.shape)} "
                f"differ in shape ({sample.get('img_path', '?')})"
            )
        lo, hi = int(pred.min()), int(pred.max())
        if lo < 0 or hi >= num_classes:
            raise InputError(
                f"prediction contains class id {hi if hi >= num_classes else lo} but the dataset "
                f"has {num_classes} classes: the decode head's num_classes in the config does "
                "not match the dataset"
            )
        bad = (label != self.ignore_index) & ((label < 0) | (label >= num_classes))
        if bool(bad.any()):
            raise InputError(
                f"ground truth contains class id {int(label[bad][0])} outside 0..{num_classes - 1} "
                f"and not ignore_index={self.ignore_index} ({sample.get('img_path', '?')})"
            )
        areas = IoUMetric.intersect_and_union(pred, label, num_classes, self.ignore_index)
        return tuple(a.double() for a in areas)

    def _depth_stats(self, sample: dict) -> np.ndarray:
        """Float64 sums over the valid pixels of one image, in ``_DEPTH_STATS`` order."""
        pred = sample["pred_depth_map"]["data"].squeeze()
        gt = sample["gt_depth_map"]["data"].squeeze().to(pred.device)
        if pred.shape != gt.shape:
            raise InputError(
                f"pred_depth_map {tuple(pred.shape)} and gt_depth_map {tuple(gt.shape)} "
                f"differ in shape ({sample.get('img_path', '?')})"
            )
        valid = (gt > self.min_depth) & (gt < self.max_depth)
        g = gt[valid].double()
        p = pred[valid].double().clamp_min(self.min_pred)
        err = p - g
        ratio = torch.maximum(p / g, g / p)
        stats = [
            g.numel(),
            (err**2).sum(),
            (err.abs() / g).sum(),
            (err**2 / g).sum(),
            ((p.log() - g.log()) ** 2).sum(),
            (p.log10() - g.log10()).abs().sum(),
            *((ratio < 1.25**k).sum() for k in (1, 2, 3)),
        ]
        return np.array([float(s) for s in stats], dtype=np.float64)

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Reduce the per-sample results to the metrics dict (and ``out_file``)."""
        seg = [r["seg"] for r in results if r["seg"] is not None]
        depth = [r["depth"] for r in results if r["depth"] is not None]
        if not seg and not depth:
            raise InputError(
                "DenseMetric got no sample with pred_sem_seg+gt_sem_seg or "
                "pred_depth_map+gt_depth_map"
            )
        metrics: dict[str, float] = OrderedDict()
        if seg:
            metrics.update(self._seg_metrics(seg))
        if depth:
            metrics.update(self._depth_metrics(np.stack(depth)))
        if self.out_file:
            write_json_atomic(self.out_file, metrics)
        return metrics

    def _seg_metrics(self, seg: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
        intersect, union, pred_area, label_area = (sum(a) for a in zip(*seg))
        ret = IoUMetric.total_area_to_metrics(intersect, union, pred_area, label_area, ["mIoU"])
        iou, acc = ret["IoU"] * 100, ret["Acc"] * 100
        metrics = {
            "mIoU": float(np.nanmean(iou)),
            "mAcc": float(np.nanmean(acc)),
            "aAcc": float(ret["aAcc"] * 100),
        }
        classes = self.dataset_meta["classes"]
        metrics.update({f"IoU.{c}": float(v) for c, v in zip(classes, iou)})

        table = PrettyTable()
        table.add_column("Class", list(classes))
        table.add_column("IoU", np.round(iou, 2).tolist())
        table.add_column("Acc", np.round(acc, 2).tolist())
        print_log("per class results:\n" + table.get_string(), logger="current")
        return metrics

    def _depth_metrics(self, stats: np.ndarray) -> dict[str, float]:
        """``stats``: (num_images, len(_DEPTH_STATS)) float64 sums."""
        pooled = _metrics_from_stats(stats.sum(axis=0))
        with_pixels = stats[stats[:, 0] > 0]
        per_image = {k: math.nan for k in DEPTH_METRICS}
        if len(with_pixels):
            per_img = [_metrics_from_stats(s) for s in with_pixels]
            per_image = {k: float(np.mean([m[k] for m in per_img])) for k in DEPTH_METRICS}
            per_image["neg_log_rmse"] = _neg_log(per_image["rmse"])
        main, other = (
            (pooled, per_image) if self.depth_reduction == "pooled" else (per_image, pooled)
        )
        suffix = "_per_image" if self.depth_reduction == "pooled" else "_pooled"
        metrics = dict(main)
        metrics.update({k + suffix: v for k, v in other.items()})

        table = PrettyTable(["reduction", *DEPTH_METRICS])
        table.add_row([self.depth_reduction, *(round(main[k], 4) for k in DEPTH_METRICS)])
        table.add_row([suffix[1:], *(round(other[k], 4) for k in DEPTH_METRICS)])
        print_log(f"depth results ({int(stats[:, 0].sum())} px):\n{table}", logger="current")
        return metrics


def _metrics_from_stats(s: np.ndarray) -> dict[str, float]:
    """Depth metrics from one row of summed ``_DEPTH_STATS``; NaN when no pixel is valid."""
    n = s[0]
    if n == 0:
        return {k: math.nan for k in DEPTH_METRICS}
    mean = dict(zip(_DEPTH_STATS[1:], s[1:] / n))
    rmse = math.sqrt(mean["sq_err"])
    return {
        "rmse": rmse,
        "neg_log_rmse": _neg_log(rmse),
        "abs_rel": mean["abs_rel"],
        "sq_rel": mean["sq_rel"],
        "rmse_log": math.sqrt(mean["sq_log_err"]),
        "log10": mean["log10_err"],
        "delta1": 100 * mean["delta1"],
        "delta2": 100 * mean["delta2"],
        "delta3": 100 * mean["delta3"],
    }


def _neg_log(rmse: float) -> float:
    """-ln(rmse): +inf for a perfect prediction, NaN for a NaN RMSE."""
    if math.isnan(rmse):
        return math.nan
    return -math.log(rmse) if rmse > 0 else math.inf
