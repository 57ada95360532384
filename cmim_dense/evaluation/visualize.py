"""Pictures of dense predictions: NYU40 palette, depth colouring, per-image panels, grids.

A *panel* is one test image drawn as five tiles side by side, ``PANEL_TITLES``:
RGB | GT seg | pred seg | GT depth | pred depth, each (H, W, 3) uint8, so a panel is
(H, 5W, 3) uint8. A task the model does not have is drawn as a grey tile.

Predictions are saved per image as ``.npz`` (:func:`save_predictions_npz`) by the test tool
so that reports can draw them later without the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cmim_dense.utils.io import save_figure_atomic, save_npz_atomic

NUM_CLASSES = 40
PANEL_TITLES = ("RGB", "GT seg", "pred seg", "GT depth", "pred depth")
DEPTH_CMAP = "viridis"  # no black in it, so black can mean "invalid depth"
MISSING_GREY = 96  # not one of the palette greys (127, 199)
_ARRAY_KEYS = ("rgb", "gt_seg", "pred_seg", "gt_depth", "pred_depth")


def _nyu40_palette() -> np.ndarray:
    # tab20 + tab20b: 40 distinct, fixed matplotlib colours; row 40 is void (black).
    colours = [*matplotlib.colormaps["tab20"].colors, *matplotlib.colormaps["tab20b"].colors]
    palette = np.round(np.asarray(colours) * 255).astype(np.uint8)
    return np.concatenate([palette, np.zeros((1, 3), np.uint8)])


NYU40_PALETTE: np.ndarray = _nyu40_palette()
"""(41, 3) uint8: rows 0..39 are the colours of class ids 0..39, row 40 (void) is black."""


def colorize_seg(seg: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 via :data:`NYU40_PALETTE`; 255 and any id outside
    0..39 are black."""
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"seg must be (H, W), got shape {seg.shape}")
    idx = np.where((seg >= 0) & (seg < NUM_CLASSES), seg, NUM_CLASSES).astype(np.intp)
    return NYU40_PALETTE[idx]


def colorize_depth(
    depth: np.ndarray, vmin: float, vmax: float, cmap: str = DEPTH_CMAP
) -> np.ndarray:
    """(H, W) depth in metres -> (H, W, 3) uint8 through a matplotlib colormap.

    Values are clipped to [vmin, vmax]; invalid pixels (<= 0 or not finite) are black.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if not vmax > vmin:
        raise ValueError(f"need vmax > vmin, got vmin={vmin}, vmax={vmax}")
    valid = np.isfinite(depth) & (depth > 0)
    norm = np.clip((np.where(valid, depth, vmin) - vmin) / (vmax - vmin), 0.0, 1.0)
    rgb = matplotlib.colormaps[cmap](norm, bytes=True)[..., :3]
    rgb[~valid] = 0
    return rgb


def _depth_range(*depths: np.ndarray | None) -> tuple[float, float]:
    """Range of the valid values of the first depth map that has any; (0, 10) otherwise."""
    for d in depths:
        if d is None:
            continue
        d = np.asarray(d, dtype=np.float64)
        v = d[np.isfinite(d) & (d > 0)]
        if v.size and v.max() > v.min():
            return float(v.min()), float(v.max())
    return 0.0, 10.0


def sample_panel(
    rgb: np.ndarray,
    gt_seg: np.ndarray | None = None,
    pred_seg: np.ndarray | None = None,
    gt_depth: np.ndarray | None = None,
    pred_depth: np.ndarray | None = None,
    depth_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """RGB | GT seg | pred seg | GT depth | pred depth as one (H, 5W, 3) uint8 image.

    Args:
        rgb: (H, W, 3) uint8, RGB order.
        gt_seg, pred_seg: (H, W) class ids (255 = void), or None (grey tile).
        gt_depth, pred_depth: (H, W) metres (0 = invalid), or None (grey tile).
        depth_range: (vmin, vmax) shared by both depth tiles; default: the range of the
            valid ground truth (of the prediction if there is no ground truth).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    vmin, vmax = depth_range or _depth_range(gt_depth, pred_depth)
    tiles = [rgb.astype(np.uint8)]
    for arr, draw in (
        (gt_seg, colorize_seg),
        (pred_seg, colorize_seg),
        (gt_depth, lambda d: colorize_depth(d, vmin, vmax)),
        (pred_depth, lambda d: colorize_depth(d, vmin, vmax)),
    ):
        if arr is None:
            tiles.append(np.full((h, w, 3), MISSING_GREY, np.uint8))
            continue
        if np.shape(arr) != (h, w):
            raise ValueError(f"panel tile has shape {np.shape(arr)}, expected {(h, w)} as rgb")
        tiles.append(draw(arr))
    return np.concatenate(tiles, axis=1)


def arrays_from_sample(sample: Any) -> dict[str, np.ndarray | None]:
    """``gt_seg``, ``pred_seg``, ``gt_depth``, ``pred_depth`` as (H, W) numpy arrays (None when
    the task is absent) from a ``SegDataSample`` or its ``to_dict()``."""
    if hasattr(sample, "to_dict"):
        sample = sample.to_dict()
    out = {}
    for name, key in (
        ("gt_seg", "gt_sem_seg"),
        ("pred_seg", "pred_sem_seg"),
        ("gt_depth", "gt_depth_map"),
        ("pred_depth", "pred_depth_map"),
    ):
        out[name] = sample[key]["data"].squeeze(0).cpu().numpy() if key in sample else None
    return out


def save_predictions_npz(
    path: str | os.PathLike,
    rgb: np.ndarray,
    gt_seg: np.ndarray | None,
    pred_seg: np.ndarray | None,
    gt_depth: np.ndarray | None,
    pred_depth: np.ndarray | None,
    name: str,
) -> Path:
    """Save one image's arrays (atomically, compressed); None arrays are left out.

    Stored dtypes: rgb uint8 (H, W, 3); segs uint8 (H, W) (ids 0..39, 255 void); depths
    float32 (H, W) metres; ``name`` a string (the image's name, used as row label).
    """
    dtypes = {"rgb": np.uint8, "gt_seg": np.uint8, "pred_seg": np.uint8}
    arrays = dict(
        rgb=rgb, gt_seg=gt_seg, pred_seg=pred_seg, gt_depth=gt_depth, pred_depth=pred_depth
    )
    stored = {
        k: np.asarray(v, dtype=dtypes.get(k, np.float32))
        for k, v in arrays.items()
        if v is not None
    }
    return save_npz_atomic(path, name=np.str_(name), **stored)


def load_predictions_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Inverse of :func:`save_predictions_npz`: keys ``rgb``, ``gt_seg``, ``pred_seg``,
    ``gt_depth``, ``pred_depth`` (None when not saved) and ``name`` (str)."""
    with np.load(path, allow_pickle=False) as f:
        out = {k: f.get(k) for k in _ARRAY_KEYS}
        out["name"] = str(f["name"]) if "name" in f else Path(path).stem
    if out["rgb"] is None:
        raise ValueError(f"{path}: no 'rgb' array; not written by save_predictions_npz")
    return out


def qualitative_figure(
    panels: list[np.ndarray],
    titles: tuple[str, ...] | list[str] = PANEL_TITLES,
    row_labels: list[str] | None = None,
    title: str | None = None,
    tile_inches: float = 2.4,
) -> Figure:
    """A figure with one row per panel, its tiles as columns, ``titles`` over the columns.

    Args:
        panels: (H_i, n W_i, 3) uint8 images, n = len(titles) equal-width tiles each.
        row_labels: optional text left of each row (e.g. the image name).
        title: optional figure title.
    """
    if not panels:
        raise ValueError("qualitative_figure needs at least one panel")
    ncols = len(titles)
    aspect = np.mean([p.shape[0] / (p.shape[1] / ncols) for p in panels])
    fig = Figure(figsize=(tile_inches * ncols, tile_inches * aspect * len(panels) + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), ncols, squeeze=False)
    for r, panel in enumerate(panels):
        if panel.shape[1] % ncols:
            raise ValueError(f"panel width {panel.shape[1]} is not a multiple of {ncols} tiles")
        for c, tile in enumerate(np.split(panel, ncols, axis=1)):
            ax = axes[r, c]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c])
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def qualitative_grid(
    panels: list[np.ndarray],
    titles: tuple[str, ...] | list[str] = PANEL_TITLES,
    row_labels: list[str] | None = None,
    title: str | None = None,
) -> np.ndarray:
    """:func:`qualitative_figure` rendered to an (H, W, 3) uint8 image."""
    fig = qualitative_figure(panels, titles, row_labels, title)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_qualitative_grid(
    path: str | os.PathLike,
    panels: list[np.ndarray],
    titles: tuple[str, ...] | list[str] = PANEL_TITLES,
    row_labels: list[str] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Save :func:`qualitative_figure` as a PNG (atomically)."""
    fig = qualitative_figure(panels, titles, row_labels, title)
    return save_figure_atomic(fig, path, dpi=dpi)
