"""Sign functions with the surrogate gradients of the binarization literature.

Every forward maps to exactly {-1, +1} (sign(0) = +1, so the set stays binary); the
methods differ only in their backward. Shapes are unchanged: any tensor in, same shape out.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hard_sign(x: Tensor) -> Tensor:
    """sign(x) with sign(0) = +1, so the output set is exactly {-1, +1}."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    """BNN (Hubara 2016): straight-through estimator clipped to abs(x) <= 1."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _ApproxSign(torch.autograd.Function):
    """Bi-Real (Liu 2018): d/dx = 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp(min=0)


class _EDESign(torch.autograd.Function):
    """IR-Net (Qin 2020) Error Decay Estimator: d/dx = k * t * (1 - tanh(t x)^2)."""

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, k: Tensor) -> Tensor:
        ctx.save_for_backward(x, t, k)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, t, k = ctx.saved_tensors
        return grad * k * t * (1 - torch.tanh(t * x) ** 2), None, None


def sign_ste(x: Tensor) -> Tensor:
    """sign with the clipped straight-through gradient ``1[|x| <= 1]``."""
    return _SignSTE.apply(x)


def approx_sign(x: Tensor) -> Tensor:
    """sign with Bi-Real's piecewise-polynomial gradient ``max(0, 2 - 2|x|)``."""
    return _ApproxSign.apply(x)


def ede_sign(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """sign with IR-Net's EDE gradient ``k t (1 - tanh(t x)^2)``; t, k are 0-d tensors."""
    return _EDESign.apply(x, t, k)


def channel_mean_abs(w: Tensor) -> Tensor:
    """Per-output-channel mean(|W|): (O, I, kh, kw) -> (O, 1, 1, 1)."""
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
