"""DenseDataPreProcessor, built from the model config: batches are padded to ``size`` with 0 for
the image, 255 for segmentation and 0 (invalid) for depth; ground truth is not padded at test
time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from cmim_dense.models.data_preprocessor import DenseDataPreProcessor
from cmim_dense.registry import MODELS

MODEL_CONFIG = (
    Path(__file__).resolve().parents[1] / "configs" / "_base_" / "models" / "deeplabv3_bin_r18.py"
)


def _preprocessor(**overrides) -> DenseDataPreProcessor:
    cfg = Config.fromfile(MODEL_CONFIG).data_preprocessor
    cfg.update(overrides)
    preprocessor = MODELS.build(cfg)
    assert isinstance(preprocessor, DenseDataPreProcessor)
    return preprocessor


def _sample(h: int, w: int, seed: int) -> tuple[torch.Tensor, SegDataSample]:
    """A (3, h, w) uint8 BGR image with labels 0..39 and depth in 0.5..9.5 m (some 0, invalid),
    none equal to a pad value."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.randint(1, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 40, (1, h, w), generator=gen))
    depth = 0.5 + 9 * torch.rand(1, h, w, generator=gen)
    depth[0, 0, 0] = 0.0
    sample.gt_depth_map = PixelData(data=depth)
    return img, sample


def _normalized(img: torch.Tensor, preprocessor: DenseDataPreProcessor) -> torch.Tensor:
    """What the preprocessor makes of a BGR uint8 image: RGB, minus mean, over std."""
    return (img[[2, 1, 0]].float() - preprocessor.mean) / preprocessor.std


def test_training_pads_image_seg_and_depth_to_size() -> None:
    size = (6, 8)  # (h, w), larger than both samples
    preprocessor = _preprocessor(size=size)
    assert preprocessor.depth_pad_val == 0 and preprocessor.seg_pad_val == 255
    shapes = [(4, 5), (6, 3)]
    raw = [_sample(h, w, seed) for seed, (h, w) in enumerate(shapes)]
    want = [(img, s.gt_sem_seg.data.clone(), s.gt_depth_map.data.clone()) for img, s in raw]
    data = dict(inputs=[img for img, _ in raw], data_samples=[s for _, s in raw])
    out = preprocessor(data, training=True)

    assert tuple(out["inputs"].shape) == (2, 3, *size)
    for i, ((h, w), (img, seg, depth)) in enumerate(zip(shapes, want)):
        sample = out["data_samples"][i]
        assert sample.metainfo["padding_size"] == (0, size[1] - w, 0, size[0] - h)
        got_img = out["inputs"][i]
        got_seg, got_depth = sample.gt_sem_seg.data, sample.gt_depth_map.data
        assert got_seg.shape == got_depth.shape == (1, *size)
        pad = torch.ones(size, dtype=torch.bool)
        pad[:h, :w] = False
        # the unpadded region is unchanged
        torch.testing.assert_close(got_img[:, :h, :w], _normalized(img, preprocessor))
        assert torch.equal(got_seg[:, :h, :w], seg)
        assert torch.equal(got_depth[:, :h, :w], depth)
        # the padding: image 0 (after normalization), seg 255, depth 0 = invalid, never 255
        assert pad.sum() > 0
        assert torch.all(got_img[:, pad] == 0)
        assert torch.all(got_seg[0][pad] == 255)
        assert torch.all(got_depth[0][pad] == 0)
        assert not torch.any(got_depth == 255)


def test_training_never_crops_samples_larger_than_size() -> None:
    preprocessor = _preprocessor(size=(3, 4))  # smaller than the samples: nothing to pad
    raw = [_sample(5, 7, seed) for seed in range(2)]
    depths = [s.gt_depth_map.data.clone() for _, s in raw]
    data = dict(inputs=[img for img, _ in raw], data_samples=[s for _, s in raw])
    out = preprocessor(data, training=True)
    assert tuple(out["inputs"].shape) == (2, 3, 5, 7)
    for sample, depth in zip(out["data_samples"], depths):
        assert sample.metainfo["padding_size"] == (0, 0, 0, 0)
        assert torch.equal(sample.gt_depth_map.data, depth)


@pytest.mark.parametrize("test_cfg", [None, dict(size=(6, 8))])
def test_test_time_leaves_depth_unpadded(test_cfg) -> None:
    preprocessor = _preprocessor(size=(6, 8), test_cfg=test_cfg)
    raw = [_sample(4, 5, seed) for seed in range(2)]
    want = [(s.gt_sem_seg.data.clone(), s.gt_depth_map.data.clone()) for _, s in raw]
    data = dict(inputs=[img for img, _ in raw], data_samples=[s for _, s in raw])
    out = preprocessor(data, training=False)
    assert tuple(out["inputs"].shape) == (2, 3, *((6, 8) if test_cfg else (4, 5)))
    for sample, (seg, depth) in zip(out["data_samples"], want):
        assert torch.equal(sample.gt_sem_seg.data, seg)
        assert torch.equal(sample.gt_depth_map.data, depth)
