"""Generate -> prepare -> load through the registered dataset: pixels, labels and depth survive
exactly, which also proves the column-major axis order is undone correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from cmim_dense.nyud_io.classes import NYUD13_FROM_40
from cmim_dense.nyud_io.convert import class_lut, prepare_nyud
from cmim_dense.nyud_io.synth import generate_synth_nyud, render_frame, synth_map_class
from cmim_dense.registry import DATASETS

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "_base_" / "datasets" / "nyud.py"
SEED, FRAMES, SIZE = 4, 5, (480, 640)  # the real size, so the test pipeline's Resize is a no-op


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return generate_synth_nyud(tmp_path_factory.mktemp("raw"), FRAMES, SEED, SIZE, progress=False)


def _build(data_root: Path, dataset_type: str = "NYUDv2Dataset"):
    init_default_scope("cmim_dense")
    cfg = Config.fromfile(CONFIG).val_dataloader.dataset
    cfg.update(type=dataset_type, data_root=str(data_root))
    return DATASETS.build(cfg)


def _frame_of(sample) -> int:
    return int(Path(sample["data_samples"].img_path).stem) - 1


@pytest.mark.parametrize("classes", [40, 13])
def test_round_trip_exact(raw, tmp_path: Path, classes: int) -> None:
    out = tmp_path / "nyud"
    result = prepare_nyud(
        raw.labeled, raw.splits, raw.mapping, out, classes=classes, progress=False
    )
    assert sum(result.counts.values()) == FRAMES
    dataset = _build(out, "NYUDv2Dataset" if classes == 40 else "NYUDv2Dataset13")
    assert len(dataset) == result.counts["test"] and len(dataset.metainfo["classes"]) == classes
    lut = class_lut(synth_map_class(), NYUD13_FROM_40 if classes == 13 else None)
    void_pixels = 0
    for sample in dataset:
        frame = render_frame(SEED, _frame_of(sample), SIZE)
        img = sample["inputs"].numpy()  # (3, H, W) BGR, as LoadImageFromFile reads it
        seg = sample["data_samples"].gt_sem_seg.data.numpy()[0]
        depth = sample["data_samples"].gt_depth_map.data.numpy()[0]
        np.testing.assert_array_equal(img[::-1].transpose(1, 2, 0), frame.rgb)
        np.testing.assert_array_equal(seg, lut[frame.labels])
        np.testing.assert_array_equal(np.round(depth * 1000), np.round(frame.depth * 1000))
        assert np.abs(depth - frame.depth).max() < 1e-6
        for y, x in ((0, 639), (479, 0), (123, 456), (400, 17)):  # asymmetric spots
            assert tuple(img[::-1, y, x]) == tuple(frame.rgb[y, x])
            assert seg[y, x] == lut[frame.labels[y, x]]
            assert depth[y, x] == pytest.approx(frame.depth[y, x], abs=1e-6)
        void_pixels += int((seg == 255).sum())
    assert void_pixels > 0  # the seed has unlabelled clutter, so the void path is covered


def test_train_split_loads_with_crop_size(raw, tmp_path: Path) -> None:
    out = tmp_path / "nyud"
    prepare_nyud(raw.labeled, raw.splits, raw.mapping, out, progress=False)
    init_default_scope("cmim_dense")
    cfg = Config.fromfile(CONFIG).train_dataloader.dataset
    cfg.data_root = str(out)
    dataset = DATASETS.build(cfg)
    # Random rescaling may leave a crop smaller than 480x640 (the model's data preprocessor pads
    # batches to the crop size); image and maps always share one shape within the crop size.
    for _ in range(3):
        sample = dataset[0]
        _, h, w = sample["inputs"].shape
        assert h <= 480 and w <= 640
        assert tuple(sample["data_samples"].gt_sem_seg.shape) == (h, w)
        assert tuple(sample["data_samples"].gt_depth_map.shape) == (h, w)
