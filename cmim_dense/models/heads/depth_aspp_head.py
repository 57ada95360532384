"""DeepLab ASPP head for depth regression."""

from __future__ import annotations

import torch
from mmseg.models.decode_heads import ASPPHead, DepthwiseSeparableASPPHead
from mmseg.models.utils import resize
from torch import Tensor

from cmim_dense.models.heads.decode_losses import decode_losses
from cmim_dense.registry import MODELS
from cmim_dense.utils.errors import InputError


class _DepthRegressionMixin:
    """Turns a one-channel mmseg decode head into a metric depth regressor.

    The head's ``cls_seg`` output x (N, 1, h, w) becomes depth = max_depth * sigmoid(x)
    in metres, so it is positive and bounded. The loss reads ``gt_depth_map`` (metres,
    0 = invalid) and is computed on valid pixels only (the loss ignores depth <= 0).
    """

    def _init_depth(self, max_depth: float) -> None:
        if self.out_channels != 1:
            raise InputError(f"a depth head has one output channel, got {self.out_channels}")
        self.max_depth = max_depth

    def forward(self, inputs: tuple[Tensor, ...]) -> Tensor:
        """Multi-level features -> depth (N, 1, h, w) in metres, at the feature resolution."""
        return self.max_depth * torch.sigmoid(super().forward(inputs))

    def loss_by_feat(self, depth: Tensor, batch_data_samples: list) -> dict[str, Tensor]:
        gt = torch.stack([s.gt_depth_map.data for s in batch_data_samples]).to(depth.dtype)
        depth = resize(depth, size=gt.shape[2:], mode="bilinear", align_corners=self.align_corners)
        return decode_losses(self, depth, gt)


@MODELS.register_module()
class DepthASPPHead(_DepthRegressionMixin, ASPPHead):
    """DeepLabV3 ASPP head regressing depth in metres (N, 1, h, w).

    Args:
        max_depth: upper bound of the predicted depth in metres (NYUD-v2: 10).
        Other arguments are :class:`mmseg.models.decode_heads.ASPPHead`'s; ``num_classes``
        and ``out_channels`` are fixed to 1.
    """

    def __init__(self, max_depth: float = 10.0, **kwargs):
        kwargs.update(num_classes=1, out_channels=1, threshold=0.5)
        super().__init__(**kwargs)
        self._init_depth(max_depth)


@MODELS.register_module()
class DepthDepthwiseSeparableASPPHead(_DepthRegressionMixin, DepthwiseSeparableASPPHead):
    """DeepLabV3+ head (separable ASPP + low-level decoder) regressing depth in metres."""

    def __init__(self, max_depth: float = 10.0, **kwargs):
        kwargs.update(num_classes=1, out_channels=1, threshold=0.5)
        super().__init__(**kwargs)
        self._init_depth(max_depth)
