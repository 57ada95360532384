"""mmseg's DeepLab segmentation heads, with a faster loss on CPU and no per-step pixel accuracy.

mmseg's ``BaseDecodeHead.loss_by_feat`` also computes ``acc_seg``, a top-1 of every pixel's
logits, at each training step for a number that is only logged; on a CPU it is about a tenth of
a small head's step. These heads compute the same losses and leave it out.

The full-resolution logits are most of a small head's loss cost on CPU. They are resized in
NHWC, where ATen's bilinear kernel is about 5x faster than in NCHW (forward and backward), and
a softmax cross-entropy sees them as pixel rows (N*H*W, C), a free view of NHWC memory whose
log-softmax runs along contiguous memory; on (N, C, H, W) the CPU kernel first copies to NCHW.
Together about 2.5x faster (8 x 40 classes x 120 x 160, one thread), same values up to rounding.
"""

from __future__ import annotations

import torch
from mmseg.models.decode_heads import ASPPHead, DepthwiseSeparableASPPHead
from mmseg.models.losses import CrossEntropyLoss
from mmseg.models.losses.cross_entropy_loss import cross_entropy
from mmseg.models.utils import resize
from torch import Tensor, nn

from cmim_dense.models.heads.decode_losses import decode_losses
from cmim_dense.registry import MODELS


def per_pixel_softmax_losses(head: nn.Module) -> bool:
    """Whether every ``loss_decode`` term of ``head`` is mmseg's softmax cross-entropy without
    class weights: losses of independent pixels, which give the same value on pixel rows.
    (Dice or Lovasz losses need the image shape; mmseg's class-weighted average loops over the
    label's first dimension.)"""
    terms = head.loss_decode if isinstance(head.loss_decode, nn.ModuleList) else [head.loss_decode]
    return all(
        isinstance(t, CrossEntropyLoss)
        and t.cls_criterion is cross_entropy
        and t.class_weight is None
        for t in terms
    )


class _LossOnlyMixin:
    """``loss_by_feat`` of mmseg 1.2's BaseDecodeHead without ``acc_seg``."""

    def loss_by_feat(self, seg_logits: Tensor, batch_data_samples: list) -> dict[str, Tensor]:
        """seg_logits (N, C, h, w) -> the decode losses against ``gt_sem_seg`` (N, H, W)."""
        seg_label = self._stack_batch_gt(batch_data_samples)
        seg_logits = resize(
            seg_logits.contiguous(memory_format=torch.channels_last),
            size=seg_label.shape[2:],
            mode="bilinear",
            align_corners=self.align_corners,
        )
        seg_weight = self.sampler.sample(seg_logits, seg_label) if self.sampler else None
        seg_label = seg_label.squeeze(1)
        if per_pixel_softmax_losses(self):
            seg_logits = seg_logits.permute(0, 2, 3, 1).reshape(-1, seg_logits.shape[1])
            seg_label = seg_label.reshape(-1)
            seg_weight = None if seg_weight is None else seg_weight.reshape(-1)
        return decode_losses(
            self, seg_logits, seg_label, weight=seg_weight, ignore_index=self.ignore_index
        )


@MODELS.register_module()
class SegASPPHead(_LossOnlyMixin, ASPPHead):
    """:class:`mmseg.models.decode_heads.ASPPHead` (DeepLabV3) without the training accuracy."""


@MODELS.register_module()
class SegDepthwiseSeparableASPPHead(_LossOnlyMixin, DepthwiseSeparableASPPHead):
    """mmseg's DeepLabV3+ head without the training accuracy."""
