"""Joint transforms for segmentation + depth samples."""

from __future__ import annotations

import mmcv
from mmcv.transforms import Pad
from mmseg.registry import TRANSFORMS


@TRANSFORMS.register_module()
class PadSegDepth(Pad):
    """Pad the image and every map in ``seg_fields``, with a pad value per kind of map.

    mmcv's ``Pad`` pads only ``gt_seg_map``, and mmseg's batch collation pads ``gt_depth_map``
    with the segmentation pad value 255, i.e. 255 m of fake depth (DESIGN.md trap 6). Padding in
    the pipeline to the crop size leaves nothing for the collation to pad, and pads depth with
    ``pad_val['depth']`` (0 = invalid).

    Args:
        size: padded size as (w, h), like mmcv's ``Pad``.
        pad_val: dict with ``img``, ``seg`` (for ``gt_seg_map`` and other label maps) and
            ``depth`` (for ``gt_depth_map``).
        **kwargs: the rest of :class:`mmcv.transforms.Pad`'s arguments.
    """

    def __init__(self, pad_val: dict | None = None, **kwargs) -> None:
        pad_val = {"img": 0, "seg": 255, "depth": 0, **(pad_val or {})}
        super().__init__(pad_val=pad_val, **kwargs)

    def _pad_seg(self, results: dict) -> None:
        for key in results.get("seg_fields", []):
            if results.get(key) is None:
                continue
            value = self.pad_val["depth" if key == "gt_depth_map" else "seg"]
            results[key] = mmcv.impad(
                results[key],
                shape=results["pad_shape"][:2],
                pad_val=value,
                padding_mode=self.padding_mode,
            )
