"""What ``cmim-dense infer`` writes per frame, per video and per run; every file atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from cmim_dense.apis.inferencer import DenseResult
from cmim_dense.evaluation.visualize import (
    DEPTH_CMAP,
    NYU40_PALETTE,
    colorize_depth,
    colorize_seg,
)
from cmim_dense.utils.io import save_figure_atomic, save_npz_atomic, write_bytes_atomic

OVERLAY_ALPHA = 0.5  # weight of the class colours over the image with --overlay
LEGEND_FILE = "legend.png"
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def seg_picture(seg: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 palette colours
    (:data:`~cmim_dense.evaluation.visualize.NYU40_PALETTE`), blended over ``rgb`` (H, W, 3)
    uint8 with weight :data:`OVERLAY_ALPHA` when it is given."""
    colours = colorize_seg(seg)
    if rgb is None:
        return colours
    return cv2.addWeighted(colours, OVERLAY_ALPHA, rgb, 1.0 - OVERLAY_ALPHA, 0.0)


def colour_bar_height(width: int, height: int) -> int:
    """Pixels of the colour bar under an (height, width) depth picture: a tenth of the
    height, 28 to 64 px, so that its labels stay legible on small and large frames."""
    return int(np.clip(height // 10, 28, 64))


def depth_picture(depth: np.ndarray, depth_range: tuple[float, float]) -> np.ndarray:
    """(H, W) metres -> (H + B, W, 3) uint8: the depth coloured over ``depth_range`` (vmin,
    vmax) metres (:func:`~cmim_dense.evaluation.visualize.colorize_depth`: clipped, black where
    invalid), above a colour bar B = :func:`colour_bar_height` px high, with ticks in metres."""
    vmin, vmax = depth_range
    h, w = depth.shape
    bar_h = colour_bar_height(w, h)
    bar = np.zeros((bar_h, w, 3), np.uint8)
    band_h = bar_h * 2 // 5
    ramp = np.linspace(0.0, 1.0, w)[None].repeat(band_h, 0)
    bar[:band_h] = matplotlib.colormaps[DEPTH_CMAP](ramp, bytes=True)[..., :3]
    scale = bar_h / 80
    thickness = 1
    locator = MaxNLocator(nbins=max(2, w // 90), steps=[1, 2, 2.5, 5, 10])
    for value in locator.tick_values(vmin, vmax):
        if not vmin <= value <= vmax:
            continue
        x = round((value - vmin) / (vmax - vmin) * (w - 1))
        cv2.line(bar, (x, 0), (x, band_h + 2), (255, 255, 255), 1)
        text = f"{value:g}"
        (tw, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
        left = int(np.clip(x - tw // 2, 0, max(w - tw, 0)))
        cv2.putText(bar, text, (left, bar_h - 3), _FONT, scale, (255, 255, 255), thickness)
    unit = "m"
    (uw, _), _ = cv2.getTextSize(unit, _FONT, scale, thickness)
    cv2.putText(bar, unit, (w - uw - 1, band_h + 2 + int(14 * scale)), _FONT, scale,
                (200, 200, 200), thickness)  # fmt: skip
    return np.concatenate([colorize_depth(depth, vmin, vmax), bar], axis=0)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """(H, W, 3) uint8 RGB as a PNG at ``path``, atomically."""
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    return write_bytes_atomic(path, png.tobytes())


def write_frame(
    out_dir: Path,
    name: str,
    rgb: np.ndarray,
    result: DenseResult,
    depth_range: tuple[float, float],
    overlay: bool = False,
) -> np.ndarray:
    """One frame's files, for the tasks the model has: ``<name>_seg.png`` (palette colours,
    over the image with ``overlay``), ``<name>_depth.png`` (:func:`depth_picture`) and
    ``<name>.npz`` (``seg`` (H, W) uint8 class ids, ``depth`` (H, W) float32 metres), at the
    resolution of ``rgb`` (H, W, 3) uint8.

    Returns:
        image | segmentation | depth side by side, (H + B, 3W, 3) uint8 (a missing task is a
        black tile; B as in :func:`depth_picture`), for a video.
    """
    h, w = rgb.shape[:2]
    bar_h = colour_bar_height(w, h)
    tiles = [rgb, np.zeros_like(rgb), np.zeros((h + bar_h, w, 3), np.uint8)]
    arrays = {}
    if result.seg is not None:
        tiles[1] = seg_picture(result.seg, rgb if overlay else None)
        write_png(out_dir / f"{name}_seg.png", tiles[1])
        arrays["seg"] = result.seg.astype(np.uint8)
    if result.depth is not None:
        tiles[2] = depth_picture(result.depth, depth_range)
        write_png(out_dir / f"{name}_depth.png", tiles[2])
        arrays["depth"] = result.depth.astype(np.float32)
    save_npz_atomic(out_dir / f"{name}.npz", **arrays)
    pad = np.zeros((bar_h, w, 3), np.uint8)
    return np.concatenate(
        [np.concatenate([tiles[0], pad]), np.concatenate([tiles[1], pad]), tiles[2]], axis=1
    )


def write_legend(path: str | os.PathLike, classes: Sequence[str]) -> Path:
    """A picture of every class's palette colour and name (ids 0..K-1), in 4 columns."""
    handles = [
        Patch(facecolor=NYU40_PALETTE[i] / 255, edgecolor="0.4", label=f"{i} {name}")
        for i, name in enumerate(classes)
    ]
    rows = -(-len(handles) // 4)
    fig = Figure(figsize=(9.0, 0.3 + 0.22 * rows))
    FigureCanvasAgg(fig)
    fig.legend(handles=handles, loc="center", ncol=4, fontsize=8, frameon=False,
               title="class id, name: colour in *_seg.png", title_fontsize=9)  # fmt: skip
    return save_figure_atomic(fig, path, dpi=100, bbox_inches="tight")


class VideoWriter:
    """Appends side-by-side frames (:func:`write_frame`'s) to an MP4 at ``path`` (give it a
    temporary path, :func:`~cmim_dense.utils.io.atomic_path`). The first frame fixes the size;
    sides are padded to even numbers, which the codec needs.

    Args:
        path: the ``.mp4`` file.
        fps: frames per second (the input video's).
    """

    def __init__(self, path: Path, fps: float):
        self.path = path
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None

    def write(self, panel: np.ndarray) -> None:
        """Append (H, W, 3) uint8 RGB."""
        h, w = panel.shape[:2]
        panel = np.pad(panel, ((0, h % 2), (0, w % 2), (0, 0)))
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            size = (panel.shape[1], panel.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, size)
            if not self._writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write an MP4 video to {self.path}")
        self._writer.write(np.ascontiguousarray(panel[..., ::-1]))

    def release(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
