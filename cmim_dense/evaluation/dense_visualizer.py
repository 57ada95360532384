"""mmseg's local visualizer for the two dense tasks, with the project's colours."""

from __future__ import annotations

import numpy as np
import torch
from mmengine.structures import PixelData
from mmseg.visualization import SegLocalVisualizer

from cmim_dense.evaluation.visualize import (
    NUM_CLASSES,
    NYU40_PALETTE,
    colorize_depth,
    depth_range_text,
    stamp_text,
    valid_depth_range,
)
from cmim_dense.nyud_io.classes import NYUD40_CLASSES
from cmim_dense.registry import VISUALIZERS


@VISUALIZERS.register_module()
class DenseLocalVisualizer(SegLocalVisualizer):
    """mmseg's ``SegLocalVisualizer`` (what ``MMSegInferencer`` and ``show_result_pyplot`` use)
    drawing a sample's segmentation and its depth, one below the other.

    Segmentation: mmseg's drawing (the class colours blended over the image with weight
    ``alpha``, class names at their regions). The classes and palette default to NYU40 and
    :data:`~cmim_dense.evaluation.visualize.NYU40_PALETTE` instead of mmseg's Cityscapes.

    Depth: :func:`~cmim_dense.evaluation.visualize.colorize_depth` over the map's own valid range
    in metres, written in its bottom-left corner (as the test tool's panels), instead of mmseg's
    per-image normalised feature-map heat map, which has no unit. Black is invalid depth.

    Args: those of :class:`mmseg.visualization.SegLocalVisualizer`.
    """

    def set_dataset_meta(
        self,
        classes: list | None = None,
        palette: list | None = None,
        dataset_name: str | None = None,
    ) -> None:
        """As mmseg's, but without a dataset name, missing classes are NYU40's, and a missing
        palette is NYU40's when there are 40 classes (a checkpoint's ``dataset_meta`` may carry
        the classes alone)."""
        if dataset_name is None:
            classes = list(classes or NYUD40_CLASSES)
            if not palette and len(classes) == NUM_CLASSES:
                palette = NYU40_PALETTE[:NUM_CLASSES].tolist()
        super().set_dataset_meta(classes, palette, dataset_name)

    def _draw_depth_map(self, image: np.ndarray, depth_map: PixelData) -> np.ndarray:
        """``image`` (H, W, 3) uint8 with the coloured depth (1, H, W) metres below it:
        (2H, W, 3) uint8, also made the visualizer's image (mmseg's leaves the segmentation
        there, so ``get_image()`` and ``MMSegInferencer(return_vis=True)`` lacked the depth)."""
        depth = depth_map.cpu().data
        if isinstance(depth, torch.Tensor):
            depth = depth.numpy()
        depth = np.asarray(depth, dtype=np.float32).reshape(depth.shape[-2:])
        if depth.shape != image.shape[:2]:
            raise ValueError(f"depth map {depth.shape} and image {image.shape[:2]} differ in size")
        vmin, vmax = valid_depth_range([depth])
        tile = stamp_text(colorize_depth(depth, vmin, vmax), depth_range_text(vmin, vmax))
        self.set_image(np.concatenate((image, tile), axis=0))
        return self.get_image()
