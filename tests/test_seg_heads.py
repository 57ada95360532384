"""The segmentation heads without the training accuracy compute mmseg's losses exactly."""

from __future__ import annotations

import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from cmim_dense.registry import MODELS

HEAD = dict(
    in_channels=16,
    in_index=1,
    channels=8,
    dilations=(1, 2),
    num_classes=5,
    dropout_ratio=0.0,
    loss_decode=[
        dict(type="CrossEntropyLoss", loss_weight=1.0, avg_non_ignore=True),
        dict(type="DiceLoss", loss_weight=0.5),
    ],
)


@pytest.mark.parametrize(
    "ours,theirs,extra",
    [
        ("SegASPPHead", "ASPPHead", {}),
        (
            "SegDepthwiseSeparableASPPHead",
            "DepthwiseSeparableASPPHead",
            dict(c1_in_channels=8, c1_channels=4),
        ),
    ],
)
def test_same_losses_without_acc_seg(ours, theirs, extra):
    torch.manual_seed(0)
    head = MODELS.build(dict(HEAD, type=ours, **extra))
    reference = MODELS.build(dict(HEAD, type=theirs, **extra))
    reference.load_state_dict(head.state_dict())
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    samples = []
    for _ in range(2):
        label = torch.randint(0, 5, (1, 32, 32))
        label[:, :4] = 255  # ignored pixels
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    ours_losses = head.loss(feats, samples, {})
    theirs_losses = reference.loss(feats, samples, {})
    assert "acc_seg" in theirs_losses and "acc_seg" not in ours_losses
    assert set(ours_losses) == set(theirs_losses) - {"acc_seg"}
    for key, value in ours_losses.items():
        assert torch.equal(value, theirs_losses[key]), key
