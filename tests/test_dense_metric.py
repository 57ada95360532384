"""DenseMetric against hand-computed segmentation and depth metrics."""

import json
import math

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

import cmim_dense  # noqa: F401  (shims before mmseg)
from cmim_dense.evaluation import DenseMetric
from cmim_dense.registry import METRICS

CLASSES = ("a", "b", "c", "d")

# 2x4 segmentation; 255 is void. The pred 2 under the void pixel must not count.
SEG_GT = [[0, 0, 1, 1], [2, 2, 255, 0]]
SEG_PRED = [[0, 1, 1, 1], [2, 0, 2, 0]]
# Over the 7 non-void pixels, (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0).
#   class a: intersect 2, gt 3, pred 3 -> union 4 -> IoU 1/2
#   class b: intersect 2, gt 2, pred 3 -> union 3 -> IoU 2/3
#   class c: intersect 1, gt 2, pred 1 -> union 2 -> IoU 1/2 (1/3 if void counted)
#   class d: absent from both -> IoU NaN, left out of mIoU
HAND_IOU = {"a": 1 / 2, "b": 2 / 3, "c": 1 / 2}
HAND_MIOU = 100 * (1 / 2 + 2 / 3 + 1 / 2) / 3
HAND_AACC = 100 * 5 / 7

# Two 2x2 depth images (metres). Image A: gt 0 and 12 (>= max_depth 10) are invalid, so
# only (gt 1, pred 1.5) and (gt 2, pred 2) count. Image B: 4 valid pixels, gt 4, pred 3.
DEPTH_A = ([[1.0, 2.0], [0.0, 12.0]], [[1.5, 2.0], [5.0, 5.0]])
DEPTH_B = ([[4.0, 4.0], [4.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]])
#   A: squared errors 0.25, 0 -> rmse_A = sqrt(0.25 / 2); B: 4 x 1 -> rmse_B = 1
#   pooled:    rmse = sqrt((0.25 + 4) / 6)
#   per image: rmse = (sqrt(0.125) + 1) / 2
HAND_RMSE_POOLED = math.sqrt(4.25 / 6)
HAND_RMSE_PER_IMAGE = (math.sqrt(0.125) + 1) / 2
#   log10: A |log10 1.5| + 0, B 4 x |log10 0.75|
HAND_LOG10_POOLED = (math.log10(1.5) + 4 * abs(math.log10(0.75))) / 6
#   delta1: A ratios 1.5 (no), 1 (yes); B ratios 4/3 (no) -> 1/6 pooled, (1/2 + 0)/2 per image
HAND_DELTA1_POOLED = 100 / 6
HAND_DELTA1_PER_IMAGE = 25.0
#   abs_rel: A 0.5/1 + 0, B 4 x 0.25 -> 1.5 / 6 pooled; per image (0.25 + 0.25) / 2
HAND_ABS_REL = 0.25
#   sq_rel: A 0.25/1 + 0, B 4 x 1/4 -> 1.25 / 6 pooled
HAND_SQ_REL_POOLED = 1.25 / 6


def seg_sample(gt, pred) -> dict:
    return {
        "gt_sem_seg": {"data": torch.tensor([gt])},
        "pred_sem_seg": {"data": torch.tensor([pred])},
    }


def depth_sample(gt, pred) -> dict:
    return {
        "gt_depth_map": {"data": torch.tensor([gt], dtype=torch.float32)},
        "pred_depth_map": {"data": torch.tensor([pred], dtype=torch.float32)},
    }


def run_metric(metric: DenseMetric, batches: list[list[dict]]) -> dict:
    metric.dataset_meta = {"classes": CLASSES}
    for batch in batches:
        metric.process({}, batch)
    return metric.evaluate(sum(len(b) for b in batches))


def test_segmentation_matches_hand_values():
    m = run_metric(DenseMetric(), [[seg_sample(SEG_GT, SEG_PRED)]])
    for name, iou in HAND_IOU.items():
        assert m[f"IoU.{name}"] == pytest.approx(100 * iou)
    assert math.isnan(m["IoU.d"])
    assert m["mIoU"] == pytest.approx(HAND_MIOU)
    assert m["aAcc"] == pytest.approx(HAND_AACC)
    assert not any(k.startswith("rmse") for k in m)  # no depth in the samples


def test_depth_pooled_and_per_image_match_hand_values():
    samples = [depth_sample(*DEPTH_A), depth_sample(*DEPTH_B)]
    m = run_metric(DenseMetric(), [samples])
    assert m["rmse"] == pytest.approx(HAND_RMSE_POOLED)
    assert m["neg_log_rmse"] == pytest.approx(-math.log(HAND_RMSE_POOLED))
    assert m["rmse_per_image"] == pytest.approx(HAND_RMSE_PER_IMAGE)
    assert m["neg_log_rmse_per_image"] == pytest.approx(-math.log(HAND_RMSE_PER_IMAGE))
    assert m["rmse"] != pytest.approx(m["rmse_per_image"])
    assert m["log10"] == pytest.approx(HAND_LOG10_POOLED)
    assert m["delta1"] == pytest.approx(HAND_DELTA1_POOLED)
    assert m["delta1_per_image"] == pytest.approx(HAND_DELTA1_PER_IMAGE)
    assert m["delta2"] == pytest.approx(100.0)  # 1.5 and 4/3 are both < 1.25^2
    assert m["abs_rel"] == pytest.approx(HAND_ABS_REL)
    assert m["abs_rel_per_image"] == pytest.approx(HAND_ABS_REL)
    assert m["sq_rel"] == pytest.approx(HAND_SQ_REL_POOLED)
    assert "mIoU" not in m  # no segmentation in the samples

    per = run_metric(DenseMetric(depth_reduction="per_image"), [samples])
    assert per["rmse"] == pytest.approx(HAND_RMSE_PER_IMAGE)
    assert per["rmse_pooled"] == pytest.approx(HAND_RMSE_POOLED)
    assert per["neg_log_rmse_pooled"] == pytest.approx(-math.log(HAND_RMSE_POOLED))


def test_max_depth_and_min_depth_exclude_pixels():
    # With max_depth=20 the gt-12 pixel of A (pred 5, error 7) joins the valid set.
    m = run_metric(DenseMetric(max_depth=20), [[depth_sample(*DEPTH_A)]])
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 49) / 3))
    # With min_depth=1 the gt-1 pixel leaves, only the exact (2, 2) remains.
    m = run_metric(DenseMetric(min_depth=1), [[depth_sample(*DEPTH_A)]])
    assert m["rmse"] == 0 and m["neg_log_rmse"] == math.inf


def test_pooled_is_invariant_to_batch_split():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(6):
        gt = rng.uniform(0.5, 9.5, (12, 16)) * (rng.random((12, 16)) > 0.2)
        pred = gt + rng.normal(0, 0.5, gt.shape)
        samples.append(depth_sample(gt.tolist(), pred.tolist()))
    whole = run_metric(DenseMetric(), [samples])
    split = run_metric(DenseMetric(), [samples[:1], samples[1:3], samples[3:]])
    assert whole == split
    # Pooled RMSE equals the RMSE of all valid pixels concatenated (float32 inputs).
    gts = np.concatenate([s["gt_depth_map"]["data"].double().numpy().ravel() for s in samples])
    preds = np.concatenate([s["pred_depth_map"]["data"].double().numpy().ravel() for s in samples])
    valid = (gts > 0) & (gts < 10)
    err = np.maximum(preds[valid], 1e-3) - gts[valid]
    assert whole["rmse"] == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-12)


def test_mismatched_num_classes_raises():
    pred = [[0, 1, 4, 1], [2, 0, 2, 0]]  # class id 4 with 4 classes
    with pytest.raises(ValueError, match="num_classes"):
        run_metric(DenseMetric(), [[seg_sample(SEG_GT, pred)]])


def test_bad_depth_reduction_raises():
    with pytest.raises(ValueError, match="depth_reduction"):
        DenseMetric(depth_reduction="mean")


def _seg_data_sample(seg=None, depth=None) -> SegDataSample:
    s = SegDataSample()
    s.set_metainfo({"img_path": "x.jpg", "ori_shape": (2, 4)})
    if seg is not None:
        s.gt_sem_seg = PixelData(data=torch.tensor([seg[0]]))
        s.pred_sem_seg = PixelData(data=torch.tensor([seg[1]]))
    if depth is not None:
        s.gt_depth_map = PixelData(data=torch.tensor([depth[0]], dtype=torch.float32))
        s.pred_depth_map = PixelData(data=torch.tensor([depth[1]], dtype=torch.float32))
    return s


def test_through_mmengine_evaluator_with_seg_data_samples(tmp_path):
    out_file = tmp_path / "sub" / "metrics.json"
    metric = METRICS.build(dict(type="DenseMetric", out_file=str(out_file)))
    evaluator = Evaluator([metric])
    evaluator.dataset_meta = {"classes": CLASSES}
    # One multi-task sample, then a depth-only one: the seg part sees only the first.
    evaluator.process([_seg_data_sample((SEG_GT, SEG_PRED), DEPTH_A)])
    evaluator.process([_seg_data_sample(depth=DEPTH_B)])
    m = evaluator.evaluate(2)
    assert m["mIoU"] == pytest.approx(HAND_MIOU)
    assert m["rmse"] == pytest.approx(HAND_RMSE_POOLED)
    assert m["rmse_per_image"] == pytest.approx(HAND_RMSE_PER_IMAGE)

    saved = json.loads(out_file.read_text())
    assert saved["mIoU"] == pytest.approx(HAND_MIOU)
    assert saved["neg_log_rmse"] == pytest.approx(-math.log(HAND_RMSE_POOLED))
    assert saved["IoU.d"] is None  # NaN written as null
    assert list(out_file.parent.iterdir()) == [out_file]  # no temp file left behind


def test_nan_rmse_stays_nan():
    """A NaN prediction gives a NaN RMSE and a NaN -log RMSE, never +inf (a perfect score)."""
    metric = DenseMetric()
    metric.dataset_meta = dict(classes=("a", "b"))
    gt = torch.full((1, 4, 4), 2.0)
    sample = dict(
        pred_depth_map=dict(data=torch.full((1, 4, 4), float("nan"))), gt_depth_map=dict(data=gt)
    )
    metric.process({}, [sample])
    metrics = metric.compute_metrics(metric.results)
    assert math.isnan(metrics["rmse"]) and math.isnan(metrics["neg_log_rmse"])
    assert math.isnan(metrics["neg_log_rmse_per_image"])
