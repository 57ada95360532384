"""Distribution (soft-label) distillation loss of ReActNet and S2-BNN."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cmim_dense.registry import MODELS
from cmim_dense.utils.errors import InputError


@MODELS.register_module()
class DistributionLoss(nn.Module):
    """loss = mean_batch( -sum_c softmax(t / T)_c * log_softmax(s / T)_c ) [* T^2] * loss_weight.

    This is the ReActNet/S2-BNN recipe: the cross-entropy between the teacher's and the
    student's predicted distributions. It equals KL(teacher || student) plus the teacher's
    entropy, which does not depend on the student, so the gradients are those of the KL.
    Teacher logits are detached.

    Args:
        temperature: T, softens both distributions (ReActNet uses 1).
        scale_by_t2: multiply by T^2 so gradient magnitudes do not shrink with T (Hinton KD).
        loss_weight: constant factor.
    """

    def __init__(
        self, temperature: float = 1.0, scale_by_t2: bool = False, loss_weight: float = 1.0
    ):
        super().__init__()
        if temperature <= 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.scale_by_t2 = scale_by_t2
        self.loss_weight = float(loss_weight)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """student_logits, teacher_logits: (N, C). Returns a scalar."""
        if student_logits.shape != teacher_logits.shape:
            raise InputError(
                f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
                f"vs {tuple(teacher_logits.shape)}"
            )
        t = self.temperature
        target = F.softmax(teacher_logits.detach() / t, dim=1)
        loss = -(target * F.log_softmax(student_logits / t, dim=1)).sum(1).mean()
        if self.scale_by_t2:
            loss = loss * t * t
        return self.loss_weight * loss
