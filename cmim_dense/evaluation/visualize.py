"""Pictures of dense predictions: NYU40 palette, depth colouring, per-image panels, grids.

A *sample* is one test image's arrays, a mapping with keys ``rgb`` (H, W, 3) uint8,
``gt_seg`` / ``pred_seg`` (H, W) class ids (255 = void) and ``gt_depth`` / ``pred_depth``
(H, W) float metres (<= 0 or not finite = invalid); a missing key or None means the task is
absent. :func:`load_predictions_npz` returns one.

A *panel* (:func:`sample_panel`) draws a sample as five tiles side by side, ``PANEL_TITLES``:
RGB | GT seg | pred seg | GT depth | pred depth, each (H, W, 3) uint8, so a panel is
(H, 5W, 3) uint8. An absent task is a grey tile; black is void in the seg tiles and invalid
depth in the depth tiles. Both depth tiles of a panel share one colour range:

* a lone panel (``tools/test.py --show-dir``) uses its own image's range and writes it, as
  ``"0.52-8.97 m"``, in the bottom-left corner of its first depth tile;
* :func:`qualitative_figure` (``qualitative.png``) uses one range for all its depth tiles and
  draws it as a colour bar in metres, with a legend of the classes shown and a note on black.

Predictions are saved per image as ``.npz`` (:func:`save_predictions_npz`) by the test tool
so that reports can draw them later without the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import IdentityTransform

from cmim_dense.nyud_io.classes import NYUD40_CLASSES
from cmim_dense.nyud_io.synth import SynthFrame, render_frame, synth_map_class
from cmim_dense.utils.io import save_npz_atomic, write_bytes_atomic

NUM_CLASSES = 40
PANEL_TITLES = ("RGB", "GT seg", "pred seg", "GT depth", "pred depth")
DEPTH_CMAP = "viridis"  # no black in it, so black can mean "invalid depth"
MISSING_GREY = 96  # not one of the palette greys (127, 199)
DEFAULT_DEPTH_RANGE = (0.0, 10.0)  # metres; used when no depth map has two distinct values
DEPTH_BAR_LABEL = "depth colour bar"  # matplotlib label of the colour bar's Axes
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


def valid_depth_range(depths: Iterable[np.ndarray | None]) -> tuple[float, float]:
    """(min, max) in metres of the valid values (> 0, finite) of all ``depths`` together.

    ``depths``: (H_i, W_i) maps in metres, None ones skipped. :data:`DEFAULT_DEPTH_RANGE` when
    they have no valid value or only one distinct one.
    """
    lo, hi = np.inf, -np.inf
    for d in depths:
        if d is None:
            continue
        d = np.asarray(d, dtype=np.float64)
        v = d[np.isfinite(d) & (d > 0)]
        if v.size:
            lo, hi = min(lo, v.min()), max(hi, v.max())
    return (float(lo), float(hi)) if hi > lo else DEFAULT_DEPTH_RANGE


def depth_range_text(vmin: float, vmax: float) -> str:
    """How a lone panel states its depth range in metres, e.g. ``"0.52-8.97 m"``."""
    return f"{vmin:.2f}-{vmax:.2f} m"


def present_classes(segs: Iterable[np.ndarray | None]) -> list[int]:
    """Sorted class ids 0..39 that occur in any of ``segs`` ((H, W) maps, None skipped)."""
    found: set[int] = set()
    for seg in segs:
        if seg is not None:
            ids = np.unique(np.asarray(seg))
            found.update(int(i) for i in ids if 0 <= i < NUM_CLASSES)
    return sorted(found)


def stamp_text(tile: np.ndarray, text: str) -> np.ndarray:
    """(H, W, 3) uint8 ``tile`` with ``text`` in white on a dark box in its bottom-left corner;
    the font is H/12 pixels high, within 7..16 px, and text past the tile is cut off."""
    h, w = tile.shape[:2]
    fig = Figure(figsize=((w + 2) / 100, (h + 2) / 100), dpi=100)  # >= 1 px spare each way
    canvas = FigureCanvasAgg(fig)
    fig.figimage(tile, xo=0, yo=0, origin="upper")  # pixel for pixel, at the bottom-left
    font_px = float(np.clip(h / 12, 7, 16))
    fig.text(
        font_px * 0.3,
        font_px * 0.3,
        text,
        transform=IdentityTransform(),  # x, y in pixels
        fontsize=font_px * 72 / 100,  # points at 100 dpi
        color="white",
        bbox=dict(boxstyle="square,pad=0.2", facecolor="black", alpha=0.6, edgecolor="none"),
    )
    canvas.draw()
    buf = np.asarray(canvas.buffer_rgba())
    return buf[buf.shape[0] - h :, :w, :3].copy()


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
        gt_seg, pred_seg: (H, W) class ids (255 = void, black), or None (grey tile).
        gt_depth, pred_depth: (H, W) metres (<= 0 = invalid, black), or None (grey tile).
        depth_range: (vmin, vmax) metres for both depth tiles, given when the caller shows
            the range itself (:func:`qualitative_figure`'s colour bar). Default: the range of
            this image's valid GT and predicted depth together (:func:`valid_depth_range`), written
            as :func:`depth_range_text` in the bottom-left corner of the first depth tile.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    for arr in (gt_seg, pred_seg, gt_depth, pred_depth):
        if arr is not None and np.shape(arr) != (h, w):
            raise ValueError(f"panel tile has shape {np.shape(arr)}, expected {(h, w)} as rgb")
    own_range = depth_range is None
    vmin, vmax = valid_depth_range([gt_depth, pred_depth]) if own_range else depth_range
    tiles = [rgb.astype(np.uint8)]
    stamped = False
    for arr, is_depth in (
        (gt_seg, False),
        (pred_seg, False),
        (gt_depth, True),
        (pred_depth, True),
    ):
        if arr is None:
            tiles.append(np.full((h, w, 3), MISSING_GREY, np.uint8))
        elif not is_depth:
            tiles.append(colorize_seg(arr))
        elif own_range and not stamped:
            tiles.append(stamp_text(colorize_depth(arr, vmin, vmax), depth_range_text(vmin, vmax)))
            stamped = True
        else:
            tiles.append(colorize_depth(arr, vmin, vmax))
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
    """Inverse of :func:`save_predictions_npz`: a sample (keys ``rgb``, ``gt_seg``,
    ``pred_seg``, ``gt_depth``, ``pred_depth``, None when not saved) plus ``name`` (str).

    Raises ValueError naming ``path`` if ``rgb`` is missing or not (H, W, 3), or another
    array is not (H, W); OSError / ``zipfile.BadZipFile`` / ValueError from numpy if the file
    is not a readable npz.
    """
    with np.load(path, allow_pickle=False) as f:
        out = {k: f.get(k) for k in _ARRAY_KEYS}
        out["name"] = str(f["name"]) if "name" in f else Path(path).stem
    rgb = out["rgb"]
    if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = "no 'rgb' array" if rgb is None else f"'rgb' of shape {rgb.shape}"
        raise ValueError(f"{path}: {got}, expected (H, W, 3); not written by save_predictions_npz")
    for key in _ARRAY_KEYS[1:]:
        if out[key] is not None and out[key].shape != rgb.shape[:2]:
            raise ValueError(
                f"{path}: '{key}' has shape {out[key].shape}, expected {rgb.shape[:2]} as 'rgb'"
            )
    return out


# qualitative_figure layout, in inches.
_GAP = 0.05  # between tiles
_MARGIN = 0.1
_ROW_LABEL_W = 0.3
_COL_TITLE_H = 0.3
_TITLE_H = 0.4
_KEY_H = 0.8  # band under the tiles: notes on black/grey (left), depth colour bar (right)
_BAR_H = 0.14
_FONT = 8  # points, for the notes, legend and colour bar


def qualitative_figure(
    samples: Sequence[Mapping[str, Any]],
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    tile_inches: float = 2.4,
) -> Figure:
    """One row per sample (its :func:`sample_panel` tiles as columns under ``PANEL_TITLES``),
    then a key: what black and grey mean, a colour bar in metres and a legend of classes.

    All depth tiles share one range, :func:`valid_depth_range` of every shown GT and
    predicted depth map; the colour bar's Axes (label :data:`DEPTH_BAR_LABEL`) spans it
    exactly (horizontal, so ``get_xlim()`` is the range). The legend (``fig.legends[0]``)
    lists, in id order, the NYU40 classes present in any shown GT or predicted segmentation
    (:func:`present_classes`) with their :data:`NYU40_PALETTE` colours and names. The colour
    bar / legend is left out when no sample has depth / a class.

    Args:
        samples: mappings as described in the module docstring (extra keys ignored).
        row_labels: optional text left of each row (e.g. the image name).
        title: optional figure title.
        tile_inches: width of a tile; a row's height follows its image's aspect ratio.
    """
    if not samples:
        raise ValueError("qualitative_figure needs at least one sample")
    arrays = [{k: s.get(k) for k in _ARRAY_KEYS} for s in samples]
    depths = [a[k] for a in arrays for k in ("gt_depth", "pred_depth")]
    segs = [a[k] for a in arrays for k in ("gt_seg", "pred_seg")]
    vrange = valid_depth_range(depths)
    panels = [sample_panel(**a, depth_range=vrange) for a in arrays]
    ncols = len(PANEL_TITLES)

    fig = Figure()
    FigureCanvasAgg(fig)
    legend = _class_legend(fig, present_classes(segs), ncols * tile_inches)
    legend_h = legend.get_window_extent().height / fig.dpi + _MARGIN if legend else 0.0
    row_h = [tile_inches * p.shape[0] / (p.shape[1] / ncols) for p in panels]
    left = _MARGIN + (_ROW_LABEL_W if row_labels else 0.0)
    top = (_TITLE_H if title else _MARGIN) + _COL_TITLE_H
    grid_w = ncols * tile_inches + (ncols - 1) * _GAP
    grid_h = sum(row_h) + (len(panels) - 1) * _GAP
    fig_w, fig_h = left + grid_w + _MARGIN, top + grid_h + _KEY_H + legend_h + _MARGIN
    fig.set_size_inches(fig_w, fig_h)

    def rect(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        # (x, y) = top-left corner in inches from the figure's top-left -> figure fractions
        return x / fig_w, 1 - (y + h) / fig_h, w / fig_w, h / fig_h

    _draw_tiles(fig, rect, panels, row_h, (left, top), tile_inches, row_labels)
    key_y = top + grid_h + 0.15
    has_depth = any(d is not None for d in depths)
    notes = _key_notes(arrays, has_depth)
    fig.text(left / fig_w, 1 - key_y / fig_h, notes, fontsize=_FONT, va="top")
    if has_depth:
        bar_x = left + 3 * (tile_inches + _GAP)
        _depth_bar(fig, rect(bar_x, key_y, 2 * tile_inches + _GAP, _BAR_H), vrange)
    if legend:
        legend.set_bbox_to_anchor((0.5, 1 - (top + grid_h + _KEY_H) / fig_h), fig.transFigure)
    if title:
        fig.suptitle(title, y=1 - _MARGIN / fig_h, va="top", fontsize=11)
    return fig


def _draw_tiles(
    fig: Figure,
    rect: Callable,
    panels: Sequence[np.ndarray],
    row_h: Sequence[float],
    corner: tuple[float, float],
    tile_inches: float,
    row_labels: Sequence[str] | None,
) -> None:
    """One row of tile Axes per panel (h, ncols * w, 3) from ``corner`` (x, y), the grid's
    top-left in inches; rows ``row_h`` inches high, ``_GAP`` apart; column titles over the
    first row and each row's label left of its first tile. ``rect`` maps an (x, y, w, h)
    inch box from the figure's top-left to figure fractions."""
    ncols = len(PANEL_TITLES)
    left, y = corner
    for r, (panel, h) in enumerate(zip(panels, row_h)):
        for c, tile in enumerate(np.split(panel, ncols, axis=1)):
            ax = fig.add_axes(rect(left + c * (tile_inches + _GAP), y, tile_inches, h))
            ax.imshow(tile, interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(PANEL_TITLES[c], fontsize=10)
        if row_labels:
            fig.axes[-ncols].set_ylabel(row_labels[r], fontsize=_FONT)
        y += h + _GAP


def _key_notes(arrays: Sequence[Mapping[str, Any]], has_depth: bool) -> str:
    """The key's lines on what black and grey mean, only for what the tiles show."""
    notes = []
    if any(a[k] is not None for a in arrays for k in ("gt_seg", "pred_seg")):
        notes.append("black in seg tiles: void (unlabelled pixels)")
    if has_depth:
        notes.append("black in depth tiles: invalid / missing depth")
    if any(a[k] is None for a in arrays for k in _ARRAY_KEYS[1:]):
        notes.append("grey tile: task not predicted or no ground truth")
    return "\n".join(notes)


def _depth_bar(fig: Figure, bounds: tuple[float, float, float, float], vrange) -> None:
    """The horizontal depth colour bar over ``vrange`` (m) in a new Axes at ``bounds``
    (figure fractions), labelled :data:`DEPTH_BAR_LABEL`."""
    cax = fig.add_axes(bounds)
    cax.set_label(DEPTH_BAR_LABEL)
    bar = fig.colorbar(
        ScalarMappable(Normalize(*vrange), DEPTH_CMAP), cax=cax, orientation="horizontal"
    )
    bar.set_label("depth (m), one range for every depth tile", fontsize=_FONT)
    cax.tick_params(labelsize=_FONT)


def _class_legend(fig: Figure, classes: list[int], max_width: float):
    """``fig``'s legend of ``classes`` (ids) with as many columns as fit in ``max_width``
    inches; None when ``classes`` is empty. Its anchor is set by the caller."""
    if not classes:
        return None
    handles = [
        Patch(facecolor=NYU40_PALETTE[c] / 255, edgecolor="0.4", label=NYUD40_CLASSES[c])
        for c in classes
    ]

    def make(ncol: int):
        return fig.legend(
            handles=handles,
            loc="upper center",
            ncol=ncol,
            fontsize=_FONT,
            title="NYU40 classes in the shown GT and predictions",
            title_fontsize=_FONT,
            frameon=False,
            columnspacing=1.2,
        )

    def width(legend) -> float:
        return legend.get_window_extent().width / fig.dpi

    legend = make(1)
    # Columns are rarely narrower than half the widest entry: start from as many columns as
    # that allows and drop one until the legend fits.
    for ncol in range(min(len(classes), int(2 * max_width / width(legend))), 1, -1):
        wider = make(ncol)
        if width(wider) <= max_width:
            legend.remove()
            return wider
        wider.remove()
    return legend


# -- the synthetic data's preview (tools/make_synth_nyud.py --preview) ----------------------


def preview_image(
    frames: Sequence[SynthFrame], width: int = 200, max_depth: float = 6.0
) -> np.ndarray:
    """RGB (rows * h, 3 * width, 3) uint8, one row per frame: rgb | NYU40 labels | depth.

    Labels and depth use the colours of the evaluation pictures (:func:`colorize_seg`,
    :func:`colorize_depth` over 0..max_depth m).
    """
    lut = np.concatenate([[255], synth_map_class() - 1]).astype(np.uint8)
    rows = []
    for f in frames:
        h = round(f.rgb.shape[0] * width / f.rgb.shape[1])
        panels = [
            cv2.resize(f.rgb, (width, h), interpolation=cv2.INTER_AREA),
            cv2.resize(colorize_seg(lut[f.labels]), (width, h), interpolation=cv2.INTER_NEAREST),
            cv2.resize(
                colorize_depth(f.depth, 0.0, max_depth), (width, h), interpolation=cv2.INTER_NEAREST
            ),
        ]
        rows.append(np.concatenate(panels, axis=1))
    return np.concatenate(rows, axis=0)


def save_synth_preview(
    path: str | Path,
    seed: int = 0,
    frames: int = 4,
    size: tuple[int, int] = (240, 320),
    width: int = 200,
) -> Path:
    """Render ``frames`` frames and save :func:`preview_image` of them as a PNG at ``path``."""
    image = preview_image([render_frame(seed, i, size) for i in range(frames)], width)
    ok, png = cv2.imencode(".png", image[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"cannot encode the preview {path}")
    return write_bytes_atomic(path, png.tobytes())
