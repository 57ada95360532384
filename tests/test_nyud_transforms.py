"""The NYUD training pipelines keep image, segmentation and depth aligned: the main config's
(resize and flip) and the scale-augmented one's (random scale, crop and flip, with depth
rescaled by RandomResizeDepth). Batches are padded by the model's DenseDataPreProcessor with 255
for segmentation and 0 for depth."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from mmseg.utils import stack_batch

from cmim_dense.datasets import RandomResizeDepth
from cmim_dense.registry import DATASETS, MODELS, TRANSFORMS
from cmim_dense.utils.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MAIN_CONFIG = CONFIGS / "nyud_deeplab_bin_r18.py"
SCALE_CONFIG = CONFIGS / "nyud_deeplab_bin_r18_scale_aug.py"
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


def _train_dataset(root: Path, config: Path = SCALE_CONFIG):
    init_default_scope("cmim_dense")
    cfg = Config.fromfile(config).train_dataloader.dataset
    # photometric distortion would change the colour code; everything geometric stays
    cfg.pipeline = [t for t in cfg.pipeline if t.type != "PhotoMetricDistortion"]
    cfg.data_root = str(root)
    return DATASETS.build(cfg)


def _uniform(a: np.ndarray, k: int = 5) -> np.ndarray:
    kernel = np.ones((k, k), np.uint8)
    return cv2.erode(a, kernel) == cv2.dilate(a, kernel)


def _check_alignment(img: np.ndarray, seg: np.ndarray, depth: np.ndarray, scale: float) -> None:
    """Every pixel away from block edges carries the label and the depth (in metres, divided by
    the applied ``scale``) of the block its colour encodes."""
    red, green = img[2], img[1]
    inside = _uniform(seg) & _uniform(red) & _uniform(green)
    assert inside.sum() > 0.5 * seg.size
    r, c = (red[inside].astype(int) - 30) // 25, (green[inside].astype(int) - 30) // 25
    assert np.all((red[inside] - 30) % 25 == 0) and np.all((green[inside] - 30) % 25 == 0)
    want_seg = np.vectorize(_block_label)(r, c)
    want_depth = np.vectorize(_block_depth_mm)(r, c) / 1000.0 / scale
    np.testing.assert_array_equal(seg[inside], want_seg)
    np.testing.assert_allclose(depth[inside], want_depth, rtol=1e-6, atol=0)


def test_main_pipeline_keeps_alignment_without_rescaling_depth(tree: Path) -> None:
    """The main config trains without random scale (README, transfer protocol): every sample
    is the whole frame at 480x640, flipped or not, with depth in metres unchanged."""
    dataset = _train_dataset(tree, MAIN_CONFIG)
    flips = set()
    for seed in range(8):
        np.random.seed(seed)
        random.seed(seed)
        sample = dataset[0]
        meta = sample["data_samples"].metainfo
        img = sample["inputs"].numpy()
        seg = sample["data_samples"].gt_sem_seg.data.numpy()[0].astype(np.uint8)
        depth = sample["data_samples"].gt_depth_map.data.numpy()[0]
        assert img.shape[1:] == seg.shape == depth.shape == (H, W)
        assert meta["scale_factor"] == (1.0, 1.0)
        flips.add(bool(meta["flip"]))
        _check_alignment(img, seg, depth, 1.0)
    assert flips == {True, False}


def test_scale_augmented_batches_keep_alignment_rescale_depth_and_pad(tree: Path) -> None:
    main = Config.fromfile(SCALE_CONFIG)
    crop_h, crop_w = main.crop_size
    assert tuple(main.model.data_preprocessor.size) == (crop_h, crop_w)
    preprocessor = MODELS.build(main.model.data_preprocessor)
    dataset = _train_dataset(tree)
    samples, raw = [], []
    flipped = upscaled = 0
    for seed in range(12):
        np.random.seed(seed)
        random.seed(seed)
        sample = dataset[0]
        meta = sample["data_samples"].metainfo
        img = sample["inputs"].numpy()  # (3, h, w) BGR, h <= crop_h, w <= crop_w
        seg = sample["data_samples"].gt_sem_seg.data.numpy()[0].astype(np.uint8)
        depth = sample["data_samples"].gt_depth_map.data.numpy()[0]
        assert img.shape[1] <= crop_h and img.shape[2] <= crop_w
        assert seg.shape == depth.shape == img.shape[1:]
        flipped += bool(meta["flip"])
        w_scale, h_scale = meta["scale_factor"]
        assert w_scale == pytest.approx(h_scale, rel=5e-3)  # keep_ratio
        upscaled += w_scale > 1.05
        _check_alignment(img, seg, depth, np.sqrt(w_scale * h_scale))
        samples.append(sample)
        raw.append((img, seg, depth))
    assert flipped and upscaled  # each transform was exercised

    batch = preprocessor(pseudo_collate(samples), training=True)
    assert tuple(batch["inputs"].shape) == (len(samples), 3, crop_h, crop_w)
    mean, std = preprocessor.mean.numpy(), preprocessor.std.numpy()
    padded = 0
    for i, (img, seg, depth) in enumerate(raw):
        h, w = seg.shape
        got = batch["data_samples"][i]
        got_seg = got.gt_sem_seg.data.numpy()[0]
        got_depth = got.gt_depth_map.data.numpy()[0]
        assert got_seg.shape == got_depth.shape == (crop_h, crop_w)
        np.testing.assert_array_equal(got_seg[:h, :w], seg)
        np.testing.assert_array_equal(got_depth[:h, :w], depth)
        np.testing.assert_allclose(
            batch["inputs"][i, :, :h, :w].numpy(), (img[::-1] - mean) / std, rtol=0, atol=1e-4
        )
        pad = np.ones((crop_h, crop_w), bool)
        pad[:h, :w] = False
        padded += bool(pad.any())
        assert np.all(got_seg[pad] == 255) and np.all(got_depth[pad] == 0)
        assert not np.any(np.isclose(got_depth, 255.0))
    assert padded  # a crop of a shrunk image was smaller than crop_size


@pytest.mark.parametrize("ratio", [2.0, 0.5])
def test_random_resize_depth_divides_depth_by_scale(ratio: float) -> None:
    """8x12 maps of 2x2 blocks: block (r, c) has label 10 r + c and depth 1 + r + 0.25 c metres,
    or 0 (invalid) where (r + c) % 3 == 0."""
    rows, cols = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    labels = (10 * rows + cols).astype(np.uint8)
    depth = np.where((rows + cols) % 3 == 0, 0, 1 + rows + 0.25 * cols).astype(np.float32)

    def up(a: np.ndarray, k: int) -> np.ndarray:
        return np.repeat(np.repeat(a, k, axis=0), k, axis=1)

    results = dict(
        img=np.dstack([up(labels, 2)] * 3),
        gt_seg_map=up(labels, 2),
        gt_depth_map=up(depth, 2),
        seg_fields=["gt_seg_map", "gt_depth_map"],
    )
    resize = RandomResizeDepth(scale=(12, 8), ratio_range=(ratio, ratio), keep_ratio=True)
    out = resize(results)
    k = int(2 * ratio)  # pixels per block side after resizing
    assert out["scale_factor"] == (ratio, ratio)
    assert out["img"].shape == (4 * k, 6 * k, 3)
    np.testing.assert_array_equal(out["gt_seg_map"], up(labels, k))  # values untouched
    assert out["gt_depth_map"].dtype == np.float32
    np.testing.assert_allclose(out["gt_depth_map"], up(depth / ratio, k), rtol=1e-6, atol=0)
    assert np.all(out["gt_depth_map"][up(depth == 0, k)] == 0)  # invalid stays invalid


def test_random_resize_depth_needs_keep_ratio() -> None:
    with pytest.raises(InputError, match="keep_ratio"):
        RandomResizeDepth(scale=(12, 8), ratio_range=(0.5, 2.0), keep_ratio=False)


@pytest.mark.parametrize(
    ("config", "resize"), [(MAIN_CONFIG, "Resize"), (SCALE_CONFIG, "RandomResizeDepth")]
)
def test_nyud_configs_rescale_depth_whenever_they_rescale_at_random(config, resize) -> None:
    pipeline = Config.fromfile(config).train_dataloader.dataset.pipeline
    (step,) = [t for t in pipeline if "Resize" in t.type]
    assert step.type == resize
    if resize == "RandomResizeDepth":
        assert tuple(step.ratio_range) == (0.5, 2.0)
        assert isinstance(TRANSFORMS.build(step), RandomResizeDepth)


def test_mmseg_batch_padding_would_fill_depth_with_255() -> None:
    """Why DenseDataPreProcessor pads depth itself: mmseg's collation pads it with seg_pad_val."""
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.zeros(1, 2, 2, dtype=torch.long))
    sample.gt_depth_map = PixelData(data=torch.ones(1, 2, 2))
    _, samples = stack_batch([torch.zeros(3, 2, 2)], [sample], size=(3, 3))
    assert samples[0].gt_depth_map.data[0, 2, 2] == 255


def test_test_pipeline_keeps_full_resolution_ground_truth(tree: Path) -> None:
    init_default_scope("cmim_dense")
    cfg = Config.fromfile(MAIN_CONFIG).val_dataloader.dataset
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
