"""Write a synthetic NYUD-v2 set in the official file formats, plus object crops.

:func:`generate_synth_nyud` writes the same files as the official release (so
``tools/prepare_nyud.py`` converts them unchanged) and an ImageFolder of object crops::

    OUT/nyu_depth_v2_labeled.mat   MATLAB v7.3: images, depths, labels, names
    OUT/splits.mat                 trainNdxs / testNdxs, 1-based
    OUT/classMapping40.mat         mapClass (1, 894), className
    OUT/class13Mapping.mat         classMapping13.labels13 (1, 40)
    OUT/crops/{train,val}/<class>/<frame:04d>_<k>.png

Frame ``i`` depends only on ``(seed, i)``, so the first frames do not change with ``frames``.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cmim_dense.nyud_io.classes import NYUD13_CLASSES, NYUD13_FROM_40, NYUD40_CLASSES
from cmim_dense.nyud_io.mat import (
    LabeledMatWriter,
    write_class13_mapping_mat,
    write_class_mapping_mat,
    write_splits_mat,
)
from cmim_dense.nyud_io.synth.render import SynthFrame, render_frame
from cmim_dense.nyud_io.synth.scene import RAW_IDS, synth_map_class, synth_names
from cmim_dense.utils.progress import progress_bar

TRAIN_FRACTION = 795 / 1449  # as in the official split


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
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = SynthPaths(
        out / "nyu_depth_v2_labeled.mat",
        out / "splits.mat",
        out / "classMapping40.mat",
        out / "class13Mapping.mat",
        out / "crops",
    )
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
                cv2.imwrite(str(folder / f"{i + 1:04d}_{k}.png"), crop[..., ::-1])
    return paths
