"""mmseg's DeepLab segmentation heads, trained without the per-step pixel accuracy.

mmseg's ``BaseDecodeHead.loss_by_feat`` also computes ``acc_seg``, a top-1 of every pixel's
logits, at each training step for a number that is only logged; on a CPU it is about a tenth of
a small head's step. These heads compute the same losses and leave it out.
"""

from __future__ import annotations

from mmseg.models.decode_heads import ASPPHead, DepthwiseSeparableASPPHead
from mmseg.models.utils import resize
from torch import Tensor

from cmim_dense.models.heads.decode_losses import decode_losses
from cmim_dense.registry import MODELS


class _LossOnlyMixin:
    """``loss_by_feat`` of mmseg 1.2's BaseDecodeHead without ``acc_seg``."""

    def loss_by_feat(self, seg_logits: Tensor, batch_data_samples: list) -> dict[str, Tensor]:
        """seg_logits (N, C, h, w) -> the decode losses against ``gt_sem_seg`` (N, H, W)."""
        seg_label = self._stack_batch_gt(batch_data_samples)
        seg_logits = resize(
            seg_logits, size=seg_label.shape[2:], mode="bilinear", align_corners=self.align_corners
        )
        seg_weight = self.sampler.sample(seg_logits, seg_label) if self.sampler else None
        return decode_losses(
            self,
            seg_logits,
            seg_label.squeeze(1),
            weight=seg_weight,
            ignore_index=self.ignore_index,
        )


@MODELS.register_module()
class SegASPPHead(_LossOnlyMixin, ASPPHead):
    """:class:`mmseg.models.decode_heads.ASPPHead` (DeepLabV3) without the training accuracy."""


@MODELS.register_module()
class SegDepthwiseSeparableASPPHead(_LossOnlyMixin, DepthwiseSeparableASPPHead):
    """mmseg's DeepLabV3+ head without the training accuracy."""
