"""NYU40 palette, depth colouring, panels, saved predictions and the qualitative grid."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from cmim_dense.evaluation.visualize import (
    DEFAULT_DEPTH_RANGE,
    DEPTH_BAR_LABEL,
    MISSING_GREY,
    NYU40_PALETTE,
    PANEL_TITLES,
    colorize_depth,
    colorize_seg,
    depth_range_text,
    load_predictions_npz,
    present_classes,
    qualitative_figure,
    sample_panel,
    save_predictions_npz,
    stamp_text,
    valid_depth_range,
)
from cmim_dense.nyud_io.classes import NYUD40_CLASSES
from cmim_dense.utils.io import save_figure_atomic

H, W = 30, 40


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


def _union_range(*depths):
    valid = np.concatenate([d[d > 0] for d in depths])
    return float(valid.min()), float(valid.max())


def test_sample_panel_shape_tiles_and_missing_task():
    rgb, gt_seg, pred_seg, gt_depth, pred_depth = _arrays()
    panel = sample_panel(rgb, gt_seg, pred_seg, gt_depth, pred_depth)
    assert panel.shape == (H, 5 * W, 3) and panel.dtype == np.uint8
    tiles = np.split(panel, 5, axis=1)
    assert np.array_equal(tiles[0], rgb)
    assert np.array_equal(tiles[1], colorize_seg(gt_seg))
    assert np.array_equal(tiles[2], colorize_seg(pred_seg))
    # Own range: GT and prediction together; only the first depth tile carries the text.
    vmin, vmax = _union_range(gt_depth, pred_depth)
    assert np.array_equal(tiles[4], colorize_depth(pred_depth, vmin, vmax))

    seg_only = sample_panel(rgb, gt_seg, pred_seg)
    assert seg_only.shape == (H, 5 * W, 3)
    assert (np.split(seg_only, 5, axis=1)[3] == MISSING_GREY).all()
    with pytest.raises(ValueError, match="shape"):
        sample_panel(rgb, gt_seg[:, :-1])


def test_sample_panel_writes_its_own_depth_range():
    rgb, gt_seg, pred_seg, gt_depth, pred_depth = _arrays()
    vmin, vmax = _union_range(gt_depth, pred_depth)
    assert depth_range_text(vmin, vmax) == f"{vmin:.2f}-{vmax:.2f} m"
    plain_gt = colorize_depth(gt_depth, vmin, vmax)
    gt_tile = np.split(sample_panel(rgb, gt_seg, pred_seg, gt_depth, pred_depth), 5, axis=1)[3]
    assert np.array_equal(gt_tile, stamp_text(plain_gt, depth_range_text(vmin, vmax)))
    changed_rows, changed_cols = np.nonzero(np.any(gt_tile != plain_gt, axis=2))
    assert changed_rows.size > 20  # the text is there ...
    assert changed_rows.min() >= H // 2 and changed_cols.min() < W // 4  # ... bottom-left
    # A range given by the caller (the grid's colour bar shows it) is not written.
    given = sample_panel(rgb, gt_seg, pred_seg, gt_depth, pred_depth, depth_range=(vmin, vmax))
    assert np.array_equal(np.split(given, 5, axis=1)[3], plain_gt)
    # Without GT depth the text goes on the predicted depth tile.
    pred_only = np.split(sample_panel(rgb, pred_depth=pred_depth), 5, axis=1)
    assert (pred_only[3] == MISSING_GREY).all()
    p_range = _union_range(pred_depth)
    assert not np.array_equal(pred_only[4], colorize_depth(pred_depth, *p_range))


def test_valid_depth_range_and_present_classes():
    a = np.array([[0.0, 2.0], [np.nan, 3.5]])
    b = np.array([[1.25, -1.0], [np.inf, 0.0]])
    assert valid_depth_range([a, None, b]) == (1.25, 3.5)
    assert valid_depth_range([np.full((2, 2), 2.0)]) == DEFAULT_DEPTH_RANGE  # no spread
    assert valid_depth_range([None, np.zeros((2, 2))]) == DEFAULT_DEPTH_RANGE
    segs = [np.array([[3, 255], [0, 3]]), None, np.array([[39, 40], [3, 12]])]
    assert present_classes(segs) == [0, 3, 12, 39]  # void (255) and ids >= 40 left out
    assert present_classes([None]) == []


def _tile_images(fig):
    """Tile images of a qualitative figure, row-major: [[RGB, GT seg, ...], ...]."""
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    return [images[i : i + 5] for i in range(0, len(images), 5)]


def test_qualitative_figure_shares_one_depth_range():
    near, far = _arrays(1), _arrays(2)
    near = (*near[:3], near[3] * 0.1 + 0.5, near[4] * 0.1 + 0.5)  # about 0.5..1.4 m
    far = (*far[:3], far[3] + 4.0, far[4] + 4.0)  # about 4.5..13 m
    samples = [
        dict(zip(("rgb", "gt_seg", "pred_seg", "gt_depth", "pred_depth"), a)) for a in (near, far)
    ]
    lo, hi = _union_range(near[3], near[4], far[3], far[4])
    assert lo < 0.6 and hi > 12.0

    fig = qualitative_figure(samples, ["near", "far"])
    (cax,) = [ax for ax in fig.axes if ax.get_label() == DEPTH_BAR_LABEL]
    assert cax.get_xlim() == pytest.approx((lo, hi))
    assert "depth (m)" in cax.get_xlabel()
    rows = _tile_images(fig)
    assert len(rows) == 2
    for row, (_, _, _, gt_depth, pred_depth) in zip(rows, (near, far)):
        assert np.array_equal(row[3], colorize_depth(gt_depth, lo, hi))
        assert np.array_equal(row[4], colorize_depth(pred_depth, lo, hi))
    assert [ax.get_title() for ax in fig.axes[:5]] == list(PANEL_TITLES)
    notes = "\n".join(t.get_text() for t in fig.texts)
    assert "black in seg tiles: void" in notes and "black in depth tiles: invalid" in notes
    assert "grey tile" not in notes  # no task is missing


def test_qualitative_figure_legend_lists_exactly_the_present_classes():
    rgb = np.zeros((H, W, 3), np.uint8)
    gt_a = np.full((H, W), 255, np.uint8)
    gt_a[:5] = 0
    gt_a[5:10] = 5
    pred_a = np.full((H, W), 12, np.uint8)
    gt_b = np.full((H, W), 39, np.uint8)
    samples = [
        dict(rgb=rgb, gt_seg=gt_a, pred_seg=pred_a, name="a"),
        dict(rgb=rgb, gt_seg=gt_b, pred_seg=None),
    ]
    fig = qualitative_figure(samples, title="seg only")
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["wall", "sofa", "blinds", "otherprop"]
    assert [NYUD40_CLASSES[i] for i in (0, 5, 12, 39)] == ["wall", "sofa", "blinds", "otherprop"]
    colours = [tuple(h.get_facecolor()[:3]) for h in legend.legend_handles]
    assert colours == [tuple(NYU40_PALETTE[i] / 255) for i in (0, 5, 12, 39)]
    # No depth anywhere: no colour bar, and the note only explains what is shown.
    assert not [ax for ax in fig.axes if ax.get_label() == DEPTH_BAR_LABEL]
    notes = "\n".join(t.get_text() for t in fig.texts)
    assert "black in seg tiles" in notes and "grey tile" in notes
    assert "depth tiles" not in notes


def test_qualitative_figure_png_layout_does_not_overlap(tmp_path):
    rng = np.random.default_rng(3)
    samples = [
        dict(
            rgb=a[0],
            gt_seg=rng.integers(0, 40, (H, W)),  # all 40 classes: the largest legend
            pred_seg=a[2],
            gt_depth=a[3],
            pred_depth=a[4],
        )
        for a in (_arrays(s) for s in range(3))
    ]
    fig = qualitative_figure(samples, ["a", "b", "c"], title="layout")
    path = save_figure_atomic(fig, tmp_path / "grid.png", dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG"
        # margins 0.1 + row labels 0.3 + 5 tiles of 2.4 + 4 gaps of 0.05 + margin 0.1 inches
        assert im.size[0] == pytest.approx(50 * 12.7, abs=1)
        image = np.asarray(im.convert("RGB"))
    assert image.std() > 0

    renderer = fig.canvas.get_renderer()
    tiles = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    (cax,) = [ax for ax in fig.axes if ax.get_label() == DEPTH_BAR_LABEL]
    bar = cax.get_tightbbox(renderer)  # with ticks and label
    (legend,) = fig.legends
    leg = legend.get_window_extent(renderer)
    assert len(legend.get_texts()) == 40
    lowest_tile = min(t.y0 for t in tiles)
    assert bar.y1 < lowest_tile and leg.y1 < bar.y0  # tiles, then colour bar, then legend
    assert leg.x0 >= 0 and leg.x1 <= fig.bbox.width and leg.y0 >= 0  # legend inside figure
    assert fig.get_suptitle() == "layout"


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
