"""Write a synthetic NYUD-v2 set in the official file formats, plus object crops.

:func:`generate_synth_nyud` writes the same files as the official release (so
``tools/prepare_nyud.py`` converts them unchanged) and an ImageFolder of object crops::

    OUT/nyu_depth_v2_labeled.mat   MATLAB v7.3: images, depths, labels, names
    OUT/splits.mat                 trainNdxs / testNdxs, 1-based
    OUT/classMapping40.mat         mapClass (1, 894), className
    OUT/class13Mapping.mat         classMapping13.labels13 (1, 40)
    OUT/crops/{train,val}/<class>/<frame:04d>_<k>.png
    OUT/synth_info.json            the stamp: frames, seed, size, crop size

The folder is written beside OUT (``.OUT.partial-<pid>-*``) and moved into place when complete;
OUT must be missing, empty, or an earlier output of this function (which is replaced).

Frame ``i`` depends only on ``(seed, i)``, so the first frames do not change with ``frames``.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cmim_dense.nyud_io.classes import NYUD13_CLASSES, NYUD13_FROM_40, NYUD40_CLASSES
from cmim_dense.nyud_io.mat import (
    LabeledMatWriter,
    NYUDFormatError,
    write_class13_mapping_mat,
    write_class_mapping_mat,
    write_splits_mat,
)
from cmim_dense.nyud_io.synth.render import SynthFrame, render_frame
from cmim_dense.nyud_io.synth.scene import RAW_IDS, synth_map_class, synth_names
from cmim_dense.utils.io import StagedDir, remove_dead_partials, write_json_atomic
from cmim_dense.utils.progress import progress_bar

TRAIN_FRACTION = 795 / 1449  # as in the official split
SYNTH_INFO = "synth_info.json"  # the stamp of a folder this module wrote (and may replace)
SYNTH_FORMAT = 1


@dataclass
class SynthPaths:
    """Files written by :func:`generate_synth_nyud`."""

    labeled: Path
    splits: Path
    mapping: Path
    mapping13: Path
    crops: Path


def split_indices(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-based (train, test) frame numbers, ~55 % / 45 % like the official split."""
    if frames < 2:
        raise ValueError(f"need at least 2 frames for a train and a test split, got {frames}")
    n_train = min(max(round(frames * TRAIN_FRACTION), 1), frames - 1)
    order = np.random.default_rng([seed, 2**32 - 1]).permutation(frames) + 1
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def object_crops(
    frame: SynthFrame, rng: np.random.Generator, crop_size: int = 64, min_fraction: float = 0.01
) -> list[tuple[str, np.ndarray]]:
    """(class name, RGB crop (crop_size, crop_size, 3) uint8) of the frame's objects and surfaces.

    Objects: a square around each instance that covers at least ``min_fraction`` of the frame.
    Wall, floor, ceiling: one square patch each (a quarter of the frame height) that is >= 60 %
    of that class.
    """
    h, w = frame.labels.shape
    crops = []
    for inst, cls in enumerate(frame.objects):
        ys, xs = np.nonzero(frame.instances == inst)
        if not cls or ys.size < min_fraction * h * w:
            continue
        side = min(int(1.15 * max(np.ptp(ys), np.ptp(xs))) + 1, h, w)
        cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
        y0, x0 = np.clip(cy - side // 2, 0, h - side), np.clip(cx - side // 2, 0, w - side)
        crops.append((cls, frame.rgb[y0 : y0 + side, x0 : x0 + side]))
    side = h // 4
    for cls in ("wall", "floor", "ceiling"):
        ys, xs = np.nonzero(frame.labels == RAW_IDS[cls])
        for _ in range(20 if ys.size else 0):
            k = rng.integers(ys.size)
            y0, x0 = (
                np.clip(ys[k] - side // 2, 0, h - side),
                np.clip(xs[k] - side // 2, 0, w - side),
            )
            patch = frame.labels[y0 : y0 + side, x0 : x0 + side]
            if np.mean(patch == RAW_IDS[cls]) >= 0.6:
                crops.append((cls, frame.rgb[y0 : y0 + side, x0 : x0 + side]))
                break
    size = (crop_size, crop_size)
    return [(cls, cv2.resize(img, size, interpolation=cv2.INTER_AREA)) for cls, img in crops]


def generate_synth_nyud(
    out: str | Path,
    frames: int,
    seed: int = 0,
    size: tuple[int, int] = (240, 320),
    crop_size: int = 64,
    progress: bool = True,
    workers: int = 1,
) -> SynthPaths:
    """Render ``frames`` frames at ``size`` = (H, W) and write them in the official NYUD formats,
    plus object crops (see the module docstring). Returns the paths written.

    ``workers`` > 1 renders in that many processes (frames arrive in order, so the files are
    the same bit for bit); the ``.mat`` file is written by this process alone.

    Raises:
        NYUDFormatError: ``out`` is a file or a folder this function did not write, the disk
            is too small, or a file could not be written (nothing is left behind).
    """
    out = Path(out)
    _check_replaceable(out)
    if out.parent.is_dir():
        remove_dead_partials(out.parent, out.name)  # the stages of killed earlier runs
    _check_free_space(out, frames, size, crop_size)
    try:
        stage = StagedDir(out)
    except OSError as err:
        raise NYUDFormatError(f"{out}: output folder not writable ({err.strerror})") from err
    try:
        _write(stage.path, frames, seed, size, crop_size, progress, workers)
        info = dict(format=SYNTH_FORMAT, frames=frames, seed=seed, size=list(size))
        write_json_atomic(stage.path / SYNTH_INFO, dict(info, crop_size=crop_size))
        _check_replaceable(out)  # it may have changed while we wrote
        stage.commit()
    except BaseException:
        stage.discard()
        raise
    return _paths(out)


def _paths(out: Path) -> SynthPaths:
    return SynthPaths(
        out / "nyu_depth_v2_labeled.mat",
        out / "splits.mat",
        out / "classMapping40.mat",
        out / "class13Mapping.mat",
        out / "crops",
    )


def _check_replaceable(out: Path) -> None:
    """Refuse (:class:`NYUDFormatError`) an ``out`` that is a file, or a non-empty folder not
    written by :func:`generate_synth_nyud` (no ``synth_info.json``): a user's folder is never
    written into or replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NYUDFormatError(f"{out}: is a file; give a new or empty folder")
    if any(out.iterdir()) and not (out / SYNTH_INFO).is_file():
        raise NYUDFormatError(
            f"{out}: not empty and not written by make_synth_nyud (no {SYNTH_INFO}); "
            "give a new or empty folder"
        )


def _check_free_space(out: Path, frames: int, size: tuple[int, int], crop_size: int) -> None:
    """Refuse to start when the disk cannot hold the output (HDF5 does not fail cleanly when
    the disk fills up mid-file)."""
    parent = next(p for p in (out, *out.parents) if p.exists())
    h, w = size
    # rgb uint8 + depth float32 + labels uint16 per pixel, and up to 16 PNG crops per frame
    need = frames * (h * w * (3 + 4 + 2) + 16 * crop_size * crop_size * 3)
    free = shutil.disk_usage(parent).free
    if need > free:
        raise NYUDFormatError(
            f"{out}: needs about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free on its disk"
        )


def _write(
    out: Path,
    frames: int,
    seed: int,
    size: tuple[int, int],
    crop_size: int,
    progress: bool,
    workers: int,
) -> None:
    """Write the files of :func:`generate_synth_nyud` into the folder ``out``."""
    paths = _paths(out)
    train, test = split_indices(frames, seed)
    write_splits_mat(paths.splits, train, test)
    write_class_mapping_mat(paths.mapping, synth_map_class(), NYUD40_CLASSES)
    write_class13_mapping_mat(paths.mapping13, NYUD13_FROM_40, NYUD13_CLASSES)
    crop_split = dict.fromkeys(train.tolist(), "train") | dict.fromkeys(test.tolist(), "val")
    for split in ("train", "val"):
        for cls in RAW_IDS:
            (paths.crops / split / cls).mkdir(parents=True, exist_ok=True)
    render = functools.partial(render_frame, seed, size=size)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(LabeledMatWriter(paths.labeled, frames, *size, synth_names()))
        rendered = map(render, range(frames))
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(workers))
            rendered = pool.imap(render, range(frames), chunksize=8)
        frames_seen = progress_bar(rendered, "synth", "frame", total=frames, disable=not progress)
        for i, frame in enumerate(frames_seen):
            writer.write(i, frame.rgb, frame.depth, frame.labels)
            rng = np.random.default_rng([seed, i, 1])
            for k, (cls, crop) in enumerate(object_crops(frame, rng, crop_size)):
                folder = paths.crops / crop_split[i + 1] / cls
                path = folder / f"{i + 1:04d}_{k}.png"
                if not cv2.imwrite(str(path), crop[..., ::-1]):  # False, not an error, when full
                    raise NYUDFormatError(f"{path}: could not be written (disk full?)")
