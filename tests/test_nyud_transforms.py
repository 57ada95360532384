"""The NYUD training pipeline keeps image, segmentation and depth aligned through random scale,
crop and flip, and pads segmentation with 255 and depth with 0."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import DATASETS, TRANSFORMS
from mmseg.structures import SegDataSample
from mmseg.utils import stack_batch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "_base_" / "datasets" / "nyud.py"
H, W, ROWS, COLS = 480, 640, 8, 8


def _block_label(r: int, c: int) -> int:
    return 255 if (r + c) % 7 == 3 else (3 * r + 5 * c) % 40


def _block_depth_mm(r: int, c: int) -> int:
    return 0 if _block_label(r, c) == 255 else 1000 + 100 * r + 10 * c


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A prepared-format tree of one frame made of 8x8 blocks; the image encodes the block
    (R = 30 + 25 r, G = 30 + 25 c, B = 100), so every pixel knows its label and depth."""
    root = tmp_path_factory.mktemp("blocks")
    rows, cols = np.arange(H) * ROWS // H, np.arange(W) * COLS // W
    r, c = np.meshgrid(rows, cols, indexing="ij")
    rgb = np.stack([30 + 25 * r, 30 + 25 * c, np.full_like(r, 100)], axis=-1).astype(np.uint8)
    labels = np.vectorize(_block_label)(r, c).astype(np.uint8)
    depth = np.vectorize(_block_depth_mm)(r, c).astype(np.uint16)
    for kind, image in (("images", rgb[..., ::-1]), ("annotations", labels), ("depth", depth)):
        (root / kind / "train").mkdir(parents=True)
        cv2.imwrite(str(root / kind / "train" / "0001.png"), image)
    return root


def _train_dataset(root: Path):
    init_default_scope("mmseg")
    cfg = Config.fromfile(CONFIG).train_dataloader.dataset
    # photometric distortion would change the colour code; everything geometric stays
    cfg.pipeline = [t for t in cfg.pipeline if t.type != "PhotoMetricDistortion"]
    cfg.data_root = str(root)
    return DATASETS.build(cfg)


def _uniform(a: np.ndarray, k: int = 5) -> np.ndarray:
    kernel = np.ones((k, k), np.uint8)
    return cv2.erode(a, kernel) == cv2.dilate(a, kernel)


def test_scale_crop_flip_keep_alignment(tree: Path) -> None:
    dataset = _train_dataset(tree)
    flipped = padded = upscaled = 0
    for seed in range(12):
        np.random.seed(seed)
        random.seed(seed)
        sample = dataset[0]
        meta = sample["data_samples"].metainfo
        img = sample["inputs"].numpy()  # (3, H, W) BGR
        seg = sample["data_samples"].gt_sem_seg.data.numpy()[0].astype(np.uint8)
        depth = sample["data_samples"].gt_depth_map.data.numpy()[0]
        assert img.shape == (3, H, W) and seg.shape == depth.shape == (H, W)
        flipped += bool(meta["flip"])
        upscaled += meta["scale_factor"][0] > 1.05

        pad = img.sum(axis=0) == 0
        padded += bool(pad.any())
        assert np.all(seg[pad] == 255) and np.all(depth[pad] == 0)
        assert not np.any(np.isclose(depth, 255.0))

        red, green = img[2], img[1]
        inside = _uniform(seg) & _uniform(red) & _uniform(green) & ~pad
        assert inside.sum() > 0.5 * (~pad).sum()
        r, c = (red[inside].astype(int) - 30) // 25, (green[inside].astype(int) - 30) // 25
        assert np.all((red[inside] - 30) % 25 == 0) and np.all((green[inside] - 30) % 25 == 0)
        want_seg = np.vectorize(_block_label)(r, c)
        want_depth = np.vectorize(_block_depth_mm)(r, c) / 1000.0
        np.testing.assert_array_equal(seg[inside], want_seg)
        np.testing.assert_allclose(depth[inside], want_depth, rtol=0, atol=1e-6)
    assert flipped and padded and upscaled  # each transform was exercised


def test_pad_seg_depth_values() -> None:
    pad = TRANSFORMS.build(dict(type="PadSegDepth", size=(5, 4)))  # (w, h) like mmcv's Pad
    results = dict(
        img=np.full((2, 3, 3), 9, np.uint8),
        gt_seg_map=np.full((2, 3), 7, np.uint8),
        gt_depth_map=np.full((2, 3), 2.5, np.float32),
        seg_fields=["gt_seg_map", "gt_depth_map"],
    )
    out = pad(results)
    assert out["img"].shape == (4, 5, 3) and out["img"][3, 4].tolist() == [0, 0, 0]
    assert out["gt_seg_map"].shape == (4, 5) and out["gt_seg_map"][3, 4] == 255
    assert out["gt_depth_map"].shape == (4, 5) and out["gt_depth_map"][3, 4] == 0
    assert out["gt_seg_map"][1, 2] == 7 and out["gt_depth_map"][1, 2] == 2.5


def test_mmseg_batch_padding_would_fill_depth_with_255() -> None:
    """Why the pipeline pads itself: mmseg's collation pads depth with seg_pad_val."""
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.zeros(1, 2, 2, dtype=torch.long))
    sample.gt_depth_map = PixelData(data=torch.ones(1, 2, 2))
    _, samples = stack_batch([torch.zeros(3, 2, 2)], [sample], size=(3, 3))
    assert samples[0].gt_depth_map.data[0, 2, 2] == 255


def test_test_pipeline_keeps_full_resolution_ground_truth(tree: Path) -> None:
    init_default_scope("mmseg")
    cfg = Config.fromfile(CONFIG).val_dataloader.dataset
    cfg.update(data_root=str(tree), data_prefix=cfg.data_prefix)
    cfg.data_prefix.update(
        img_path="images/train", seg_map_path="annotations/train", depth_map_path="depth/train"
    )
    resize = next(t for t in cfg.pipeline if t.type == "Resize")
    resize.scale = (320, 240)  # the input shrinks; the ground truth must not
    sample = DATASETS.build(cfg)[0]
    assert tuple(sample["inputs"].shape) == (3, 240, 320)
    assert tuple(sample["data_samples"].gt_sem_seg.shape) == (H, W)
    assert tuple(sample["data_samples"].gt_depth_map.shape) == (H, W)
    assert sample["data_samples"].gt_depth_map.data[0, 0, 0] == pytest.approx(1.0)
