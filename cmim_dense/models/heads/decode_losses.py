"""Summing an mmseg decode head's ``loss_decode`` terms by loss name."""

from __future__ import annotations

from torch import Tensor, nn


def decode_losses(head: nn.Module, pred: Tensor, target: Tensor, **kwargs) -> dict[str, Tensor]:
    """{loss name: sum of the head's ``loss_decode`` terms with that name} for ``pred`` against
    ``target``; ``kwargs`` go to every loss (e.g. ``ignore_index``)."""
    loss_fns = head.loss_decode
    if not isinstance(loss_fns, nn.ModuleList):
        loss_fns = [loss_fns]
    losses: dict[str, Tensor] = {}
    for loss_fn in loss_fns:
        value = loss_fn(pred, target, **kwargs)
        losses[loss_fn.loss_name] = losses.get(loss_fn.loss_name, 0) + value
    return losses
