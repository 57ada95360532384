"""Joint transforms for segmentation + depth samples."""

from __future__ import annotations

import math

import numpy as np
from mmcv.transforms import RandomResize
from mmseg.datasets.transforms import LoadDepthAnnotation as MMSegLoadDepthAnnotation

from cmim_dense.registry import TRANSFORMS
from cmim_dense.utils.errors import InputError


@TRANSFORMS.register_module()
class RandomResizeDepth(RandomResize):
    """mmcv's ``RandomResize`` that also rescales the depth values, so that depth stays metric.

    Enlarging an image by ``s`` shows the scene as a camera with the same intrinsics would see
    it from ``s`` times closer (the apparent size of an object is inversely proportional to its
    distance), so the depth of every pixel is divided by ``s``. Image and maps are resized as
    by mmcv's ``RandomResize`` with mmseg's ``Resize`` (every map in ``seg_fields`` with nearest
    neighbour, so labels and invalid depth stay exact); then ``gt_depth_map`` is divided by the
    scale actually applied, ``results['scale_factor']`` (w, h), which with ``keep_ratio`` differ
    only by rounding of the new size; their geometric mean is used. Depth 0 (invalid) stays 0.

    Required keys: ``img`` (H, W, 3) uint8; optional ``gt_seg_map`` (H, W) class ids and
    ``gt_depth_map`` (H, W) float32 metres, both listed in ``seg_fields``.
    Modified keys: ``img``, every map in ``seg_fields`` (H', W'), with H' ~ s H and W' ~ s W,
    ``gt_depth_map`` in metres as seen from ``s`` times closer.
    Added keys: ``scale``, ``scale_factor`` (w, h), ``keep_ratio``.

    Args:
        scale: base (w, h) as for mmcv's ``RandomResize``.
        ratio_range: range of the random ratio applied to ``scale``.
        resize_type: the resize transform; mmseg's ``Resize`` resizes every map in
            ``seg_fields`` (mmcv's own ``Resize`` only ``gt_seg_map``).
        **resize_kwargs: arguments of the resize transform; ``keep_ratio`` must be True, since
            an anisotropic resize has no single equivalent change of distance.
    """

    def __init__(
        self,
        scale: tuple[int, int] | list[tuple[int, int]],
        ratio_range: tuple[float, float] | None = None,
        resize_type: str = "mmseg.Resize",
        **resize_kwargs,
    ) -> None:
        if not resize_kwargs.get("keep_ratio", False):
            raise InputError("RandomResizeDepth needs keep_ratio=True")
        super().__init__(scale, ratio_range, resize_type, **resize_kwargs)

    def transform(self, results: dict) -> dict:
        results = super().transform(results)
        depth = results.get("gt_depth_map")
        if depth is not None:
            w_scale, h_scale = results["scale_factor"]
            scale = math.sqrt(w_scale * h_scale)
            results["gt_depth_map"] = (depth / scale).astype(np.float32, copy=False)
        return results


@TRANSFORMS.register_module()
class LoadDepthAnnotation(MMSegLoadDepthAnnotation):
    """mmseg's ``LoadDepthAnnotation``, passing through an image that comes without annotations.

    The configs' test pipeline loads depth after the image. A user's image
    (``mmseg.apis.inference_model``, which removes only ``LoadAnnotations`` from the pipeline, or
    this project's inferencer) has neither ``depth_map_path`` nor ``seg_map_path`` and is left
    without ``gt_depth_map``. A dataset sample with a segmentation path but no depth path still
    fails (KeyError), as does an unreadable depth file. Registered under mmseg's name in the
    project's scope, so the configs keep mmseg's transform name.

    Added keys (when ``depth_map_path`` is present): ``gt_depth_map`` (H, W) float32, scaled by
    ``depth_rescale_factor`` (1e-3: millimetres to metres), and ``depth_rescale_factor``.
    """

    def transform(self, results: dict) -> dict:
        if "depth_map_path" not in results and "seg_map_path" not in results:
            return results
        return super().transform(results)
