"""DistributionLoss: soft-label cross-entropy against hand values."""

import math

import pytest
import torch
import torch.nn.functional as F

import cmim_dense  # noqa: F401  (shims before mmseg)
from cmim_dense.losses.distill import DistributionLoss
from cmim_dense.registry import MODELS


def test_hand_values():
    loss = MODELS.build(dict(type="DistributionLoss"))
    # Uniform student: -sum p log(1/2) = log 2 for any teacher p.
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    assert loss(student, teacher).item() == pytest.approx(math.log(2))
    # Uniform teacher (1/2, 1/2), student softmax (3/4, 1/4).
    value = loss(torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2)).item()
    assert value == pytest.approx(-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)))
    # Batch mean of the two rows.
    both = loss(
        torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]),
        torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]),
    )
    assert both.item() == pytest.approx(0.5 * (math.log(2) + value))


def test_temperature_and_t2_scaling():
    student = torch.tensor([[math.log(3.0), 0.0]])
    teacher = torch.tensor([[0.0, math.log(4.0)]])
    # T = 2: softmax(t/2) = (1/3, 2/3), softmax(s/2) = (sqrt3, 1) / (sqrt3 + 1).
    q = torch.tensor([math.sqrt(3.0), 1.0]) / (math.sqrt(3.0) + 1)
    hand = -(1 / 3 * math.log(q[0]) + 2 / 3 * math.log(q[1]))
    assert DistributionLoss(temperature=2.0)(student, teacher).item() == pytest.approx(
        hand, rel=1e-6
    )
    scaled = DistributionLoss(temperature=2.0, scale_by_t2=True, loss_weight=0.5)(student, teacher)
    assert scaled.item() == pytest.approx(0.5 * 4 * hand, rel=1e-6)


def test_gradient_is_kl_and_teacher_detached():
    torch.manual_seed(0)
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    DistributionLoss()(student, teacher).backward()
    assert teacher.grad is None
    ref = student.detach().clone().requires_grad_()
    kl = F.kl_div(F.log_softmax(ref, 1), F.softmax(teacher.detach(), 1), reduction="batchmean")
    kl.backward()
    torch.testing.assert_close(student.grad, ref.grad)
    with pytest.raises(ValueError, match="shape"):
        DistributionLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
