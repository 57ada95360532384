"""NYU40 palette, depth colouring, panels, saved predictions and the qualitative grid."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from cmim_dense.evaluation.visualize import (
    MISSING_GREY,
    NYU40_PALETTE,
    PANEL_TITLES,
    colorize_depth,
    colorize_seg,
    load_predictions_npz,
    qualitative_grid,
    sample_panel,
    save_predictions_npz,
    save_qualitative_grid,
)

H, W = 6, 8


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    gt_seg = rng.integers(0, 40, (H, W)).astype(np.uint8)
    gt_seg[0, 0] = 255
    pred_seg = rng.integers(0, 40, (H, W)).astype(np.uint8)
    gt_depth = rng.uniform(0.5, 9.0, (H, W)).astype(np.float32)
    gt_depth[1, 1] = 0
    pred_depth = rng.uniform(0.5, 9.0, (H, W)).astype(np.float32)
    return rgb, gt_seg, pred_seg, gt_depth, pred_depth


def test_palette_fixed_distinct_and_void_black():
    assert NYU40_PALETTE.shape == (41, 3) and NYU40_PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in NYU40_PALETTE}) == 41
    assert NYU40_PALETTE[40].tolist() == [0, 0, 0]
    assert NYU40_PALETTE[:40].max(axis=1).min() > 0  # no class is black
    assert [MISSING_GREY] * 3 not in NYU40_PALETTE.tolist()  # a missing task is not a class
    assert NYU40_PALETTE[0].tolist() == [31, 119, 180]  # tab20's first colour, fixed
    assert NYU40_PALETTE[20].tolist() == [57, 59, 121]  # tab20b's first colour


def test_colorize_seg_maps_ids_and_void():
    seg = np.array([[0, 39], [255, 7]])
    out = colorize_seg(seg)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == NYU40_PALETTE[0].tolist()
    assert out[0, 1].tolist() == NYU40_PALETTE[39].tolist()
    assert out[1, 0].tolist() == [0, 0, 0]
    assert out[1, 1].tolist() == NYU40_PALETTE[7].tolist()


def test_colorize_depth_range_and_invalid_black():
    depth = np.array([[1.0, 5.0], [0.0, np.nan]])
    out = colorize_depth(depth, vmin=1.0, vmax=5.0)
    cmap = matplotlib.colormaps["viridis"]
    assert out[0, 0].tolist() == list(cmap(0.0, bytes=True)[:3])
    assert out[0, 1].tolist() == list(cmap(1.0, bytes=True)[:3])
    assert out[1].tolist() == [[0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="vmax"):
        colorize_depth(depth, vmin=2.0, vmax=2.0)


def test_sample_panel_shape_tiles_and_missing_task():
    rgb, gt_seg, pred_seg, gt_depth, pred_depth = _arrays()
    panel = sample_panel(rgb, gt_seg, pred_seg, gt_depth, pred_depth)
    assert panel.shape == (H, 5 * W, 3) and panel.dtype == np.uint8
    tiles = np.split(panel, 5, axis=1)
    assert np.array_equal(tiles[0], rgb)
    assert np.array_equal(tiles[2], colorize_seg(pred_seg))
    valid = gt_depth[gt_depth > 0]
    assert np.array_equal(tiles[4], colorize_depth(pred_depth, valid.min(), valid.max()))

    seg_only = sample_panel(rgb, gt_seg, pred_seg)
    assert seg_only.shape == (H, 5 * W, 3)
    assert (np.split(seg_only, 5, axis=1)[3] == MISSING_GREY).all()
    with pytest.raises(ValueError, match="shape"):
        sample_panel(rgb, gt_seg[:, :-1])


def test_predictions_npz_roundtrip(tmp_path):
    rgb, gt_seg, pred_seg, gt_depth, _ = _arrays()
    path = save_predictions_npz(
        tmp_path / "p" / "img_0001.npz", rgb, gt_seg, pred_seg, gt_depth, None, "img_0001"
    )
    loaded = load_predictions_npz(path)
    assert loaded["name"] == "img_0001"
    assert np.array_equal(loaded["rgb"], rgb)
    assert np.array_equal(loaded["gt_seg"], gt_seg)
    assert np.array_equal(loaded["pred_seg"], pred_seg)
    assert np.array_equal(loaded["gt_depth"], gt_depth)
    assert loaded["pred_depth"] is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["img_0001.npz"]


def test_qualitative_grid_image_and_png(tmp_path):
    panels = [sample_panel(*_arrays(seed)) for seed in range(3)]
    image = qualitative_grid(panels, PANEL_TITLES, ["a", "b", "c"])
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert image.std() > 0  # something was drawn
    path = save_qualitative_grid(tmp_path / "grid.png", panels, PANEL_TITLES, dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] == pytest.approx(2.4 * 5 * 50, abs=1)
