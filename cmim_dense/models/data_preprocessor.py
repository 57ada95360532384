"""Data preprocessor for joint segmentation + depth batches."""

from __future__ import annotations

import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.data_preprocessor import SegDataPreProcessor

from cmim_dense.registry import MODELS


@MODELS.register_module()
class DenseDataPreProcessor(SegDataPreProcessor):
    """mmseg's SegDataPreProcessor, but depth maps are padded with 0 (invalid), not 255.

    mmseg's ``stack_batch`` pads ``gt_depth_map`` with ``seg_pad_val`` (255), which would
    read as 255 m of valid depth. We take the depth maps out, let mmseg stack and pad
    everything else, then pad depth with ``depth_pad_val`` by the same ``padding_size``
    (left, right, top, bottom) that mmseg records. This is the project's only depth padding:
    training crops smaller than ``size`` (an image shrunk below the crop size) are padded here.
    At test time ground truth is not padded, as in mmseg.

    Shapes: ``inputs`` is a list of (3, H_i, W_i) images; in training each sample's
    ``gt_sem_seg`` (1, H_i, W_i) and ``gt_depth_map`` (1, H_i, W_i, metres) are padded
    on the right and bottom to ``size`` = (H, W), and ``inputs`` becomes (N, 3, H, W).

    Args:
        depth_pad_val: value of padded depth pixels, in metres; 0 marks them invalid.
        **kwargs: the rest of :class:`mmseg.models.SegDataPreProcessor`'s arguments.
    """

    def __init__(self, depth_pad_val: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.depth_pad_val = depth_pad_val

    def forward(self, data: dict, training: bool = False) -> dict:
        samples = data.get("data_samples") or []
        depths = [s.gt_depth_map.data if "gt_depth_map" in s else None for s in samples]
        for sample, depth in zip(samples, depths):
            if depth is not None:
                del sample.gt_depth_map
        data = super().forward(data, training)
        for sample, depth in zip(data.get("data_samples") or [], depths):
            if depth is None:
                continue
            if training:  # at test time mmseg leaves ground truth at full resolution
                left, right, top, bottom = sample.metainfo.get("padding_size", (0, 0, 0, 0))
                depth = F.pad(depth, (left, right, top, bottom), value=self.depth_pad_val)
            sample.gt_depth_map = PixelData(data=depth.to(data["inputs"].device))
        return data
