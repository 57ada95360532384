"""The segmentation heads without the training accuracy compute mmseg's losses and gradients.

Softmax cross-entropy runs on pixel rows of NHWC logits, other losses on the (N, C, H, W)
logits; both give mmseg's values up to float rounding.
"""

from __future__ import annotations

import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from cmim_dense.models.heads.seg_heads import per_pixel_softmax_losses
from cmim_dense.registry import MODELS

CE = dict(type="CrossEntropyLoss", loss_weight=1.0, avg_non_ignore=True)
HEAD = dict(in_channels=16, in_index=1, channels=8, dilations=(1, 2), num_classes=5)
HEADS = [
    ("SegASPPHead", "ASPPHead", {}),
    ("SegDepthwiseSeparableASPPHead", "DepthwiseSeparableASPPHead", dict(c1_in_channels=8)),
]
LOSSES = {
    "ce": dict(loss_decode=CE),
    "ce_and_dice": dict(loss_decode=[CE, dict(type="DiceLoss", loss_weight=0.5)]),
    "ce_ohem": dict(loss_decode=CE, sampler=dict(type="OHEMPixelSampler", thresh=0.7)),
    "ce_not_averaged": dict(loss_decode=dict(CE, avg_non_ignore=False)),
}


def _samples() -> list[SegDataSample]:
    samples = []
    for _ in range(2):
        label = torch.randint(0, 5, (1, 32, 32))
        label[:, :4] = 255  # ignored pixels
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return samples


@pytest.mark.parametrize("losses", sorted(LOSSES))
@pytest.mark.parametrize("ours,theirs,extra", HEADS)
def test_same_losses_and_gradients_without_acc_seg(ours, theirs, extra, losses):
    torch.manual_seed(0)
    cfg = dict(HEAD, dropout_ratio=0.0, **LOSSES[losses])
    if "c1_in_channels" in extra:
        cfg.update(extra, c1_channels=4)
    head = MODELS.build(dict(cfg, type=ours))
    reference = MODELS.build(dict(cfg, type=theirs))
    reference.load_state_dict(head.state_dict())
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    samples = _samples()
    ours_losses = head.loss(feats, samples, {})
    theirs_losses = reference.loss(feats, samples, {})
    assert "acc_seg" in theirs_losses and "acc_seg" not in ours_losses
    assert set(ours_losses) == set(theirs_losses) - {"acc_seg"}
    for key, value in ours_losses.items():
        torch.testing.assert_close(value, theirs_losses[key], rtol=1e-6, atol=1e-7, msg=key)
    sum(ours_losses.values()).backward()
    sum(v for k, v in theirs_losses.items() if k != "acc_seg").backward()
    theirs_grads = dict(reference.named_parameters())
    for name, param in head.named_parameters():
        torch.testing.assert_close(
            param.grad, theirs_grads[name].grad, rtol=1e-5, atol=1e-7, msg=name
        )


@pytest.mark.parametrize(
    "loss_decode,rows",
    [
        (CE, True),
        ([CE, dict(CE, loss_weight=0.5)], True),
        ([CE, dict(type="DiceLoss")], False),
        (dict(type="LovaszLoss", reduction="none"), False),
        (dict(type="CrossEntropyLoss", use_sigmoid=True), False),
        (dict(CE, class_weight=[1.0, 2.0, 1.0, 1.0, 1.0]), False),
    ],
)
def test_pixel_rows_only_for_unweighted_softmax_cross_entropy(loss_decode, rows):
    head = MODELS.build(dict(HEAD, type="SegASPPHead", loss_decode=loss_decode))
    assert per_pixel_softmax_losses(head) is rows
