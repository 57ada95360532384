"""``cmim-dense infer``: a trained dense model over a user's images, folders, globs and videos."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from cmim_dense.apis.images import (
    Source,
    UnreadableInputError,
    expand_inputs,
    open_video,
    read_image,
    video_frames,
)
from cmim_dense.apis.inferencer import DenseInferencer
from cmim_dense.apis.outputs import LEGEND_FILE, VideoWriter, write_frame, write_legend
from cmim_dense.evaluation.visualize import valid_depth_range
from cmim_dense.utils.io import atomic_path
from cmim_dense.utils.progress import progress_bar

UNREADABLE_EXIT = 2


class _Counter:
    """Frames done and seconds spent in the model."""

    def __init__(self):
        self.frames = 0
        self.model_s = 0.0

    def predict(self, inferencer: DenseInferencer, rgb):
        start = time.perf_counter()
        result = inferencer.predict_one(rgb)
        self.model_s += time.perf_counter() - start
        self.frames += 1
        return result


def infer_to_folder(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    inputs: Sequence[str],
    out_dir: str | os.PathLike,
    ir: str | os.PathLike | None = None,
    backend: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    overlay: bool = False,
    cfg_options: dict | None = None,
) -> int:
    """Predict every frame of ``inputs`` and write the results under ``out_dir``.

    ``inputs``: image files, folders (searched recursively), globs and videos. Per frame
    (``NAME``: the input's path relative to the folder or glob base given, without suffix;
    ``NAME_%06d`` for the frames of a video): ``NAME_seg.png``, ``NAME_depth.png`` and
    ``NAME.npz`` (:func:`~cmim_dense.apis.outputs.write_frame`); per video ``NAME.mp4`` of image |
    segmentation | depth; per run ``legend.png`` of the classes. Images take their own depth
    range; a video takes its first frame's for every frame. The other arguments are
    :class:`~cmim_dense.apis.inferencer.DenseInferencer`'s; ``threads`` sets torch's threads
    and OpenVINO's.

    An input that cannot be read gets one ``error:`` line on stderr and the others are still
    processed. A progress bar runs on stderr; the frame rate is printed at the end.

    Returns:
        0, or 2 when some input could not be read.

    Raises:
        InputError: a bad config, checkpoint, export or backend; no input at all.
    """
    sources, problems = expand_inputs(inputs)
    for line in problems:
        print(f"error: cannot read {line}", file=sys.stderr)
    if not sources:
        return UNREADABLE_EXIT
    if threads:
        torch.set_num_threads(threads)
    inferencer = DenseInferencer(config, checkpoint, ir, backend, device, cfg_options, threads)
    out_dir = Path(out_dir)
    has_seg = inferencer.cfg.model.get("seg_head") is not None
    if has_seg and inferencer.classes:
        write_legend(out_dir / LEGEND_FILE, inferencer.classes)
    total = _frame_count(sources)
    failed = len(problems)
    counter = _Counter()
    start = time.perf_counter()
    with progress_bar(None, desc="infer", unit="frame", total=total) as bar:
        for source in sources:
            try:
                if source.is_video:
                    _video(inferencer, source, out_dir, overlay, counter, bar)
                else:
                    _image(inferencer, source, out_dir, overlay, counter, bar)
            except UnreadableInputError as err:
                failed += 1
                tqdm.write(f"error: cannot read {err}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    if counter.frames:
        print(
            f"{counter.frames} frames in {elapsed:.1f} s: {counter.frames / elapsed:.2f} frames/s "
            f"({counter.frames / counter.model_s:.2f} frames/s in the model); outputs in {out_dir}"
        )
    if failed:
        print(f"error: {failed} input(s) could not be read", file=sys.stderr)
        return UNREADABLE_EXIT
    return 0


def _frame_count(sources: Sequence[Source]) -> int:
    """Frames to predict, for the progress bar: one per image, a video's frame count (0 for a
    video that cannot be opened)."""
    total = 0
    for source in sources:
        if source.is_video:
            try:
                capture, _, count = open_video(source.path)
            except UnreadableInputError:
                count = 0  # reported when its turn comes
            else:
                capture.release()
            total += count
        else:
            total += 1
    return total


def _image(
    inferencer: DenseInferencer,
    source: Source,
    out_dir: Path,
    overlay: bool,
    counter: _Counter,
    bar,
) -> None:
    """One image as ``NAME`` files, in its own depth range."""
    rgb = read_image(source.path)
    result = counter.predict(inferencer, rgb)
    vrange = valid_depth_range([result.depth])
    write_frame(out_dir, source.name, rgb, result, vrange, overlay)
    bar.update(1)


def _video(
    inferencer: DenseInferencer,
    source: Source,
    out_dir: Path,
    overlay: bool,
    counter: _Counter,
    bar,
) -> None:
    """Every frame of a video as ``NAME_%06d`` files, and ``NAME.mp4`` of them side by side."""
    capture, fps, _ = open_video(source.path)
    with atomic_path(out_dir / f"{source.name}.mp4") as tmp:
        writer = VideoWriter(tmp, fps)
        try:
            vrange = None
            for index, rgb in enumerate(video_frames(capture, source.path)):
                result = counter.predict(inferencer, rgb)
                if vrange is None:
                    vrange = valid_depth_range([result.depth])
                name = f"{source.name}_{index:06d}"
                writer.write(write_frame(out_dir, name, rgb, result, vrange, overlay))
                bar.update(1)
        finally:
            writer.release()
