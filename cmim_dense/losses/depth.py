"""Masked L1 depth loss (mmseg has SiLogLoss but no plain L1 that ignores invalid depth)."""

from __future__ import annotations

from torch import Tensor, nn

from cmim_dense.registry import MODELS


@MODELS.register_module()
class MaskedL1Loss(nn.Module):
    """Mean |pred - gt| over valid pixels (gt > min_depth), in metres.

    Args:
        min_depth: ground truth at or below this (m) is invalid and ignored (0 = no depth).
        loss_weight: factor of the loss.
        loss_name: the key the loss is logged under.

    ``forward(pred, gt)``: pred and gt (N, 1, H, W) in metres; returns a scalar.
    """

    def __init__(
        self, min_depth: float = 0.0, loss_weight: float = 1.0, loss_name: str = "loss_l1"
    ):
        super().__init__()
        self.min_depth = min_depth
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(self, pred: Tensor, gt: Tensor) -> Tensor:
        valid = gt > self.min_depth
        if not valid.any():
            return pred.sum() * 0  # keeps the graph; a crop can hold no valid depth
        return self.loss_weight * (pred[valid] - gt[valid]).abs().mean()
