"""Sign functions with the surrogate gradients of the binarization literature.

Every forward maps to exactly {-1, +1}: sign(x) = +1 if x > 0, else -1, so sign(0) = -1. That
is how OpenVINO's ``BinaryConvolution`` binarizes its input, so training and the deployed
engine agree bit for bit; it also keeps the zeros of a ReLU output apart from its positive
values. The methods differ only in their backward. Shapes are unchanged: any tensor in, same
shape out.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hard_sign(x: Tensor) -> Tensor:
    """+1 where x > 0, else -1 (so sign(0) = -1): the output set is exactly {-1, +1}."""
    return torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))


class SurrogateSign(torch.autograd.Function):
    """hard_sign forward; backward multiplies the incoming gradient by ``derivative(x, *params)``.

    Each method subclasses it and defines only the derivative of its surrogate. ``params`` are
    0-d tensors (schedules such as IR-Net's t, k) and get no gradient.
    """

    @staticmethod
    def derivative(x: Tensor, *params: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def forward(ctx, x: Tensor, *params: Tensor) -> Tensor:
        ctx.save_for_backward(x, *params)
        return hard_sign(x)

    @classmethod
    def backward(cls, ctx, grad: Tensor):  # a classmethod, so it reaches the subclass's rule
        x, *params = ctx.saved_tensors
        return grad * cls.derivative(x, *params), *(None for _ in params)


class _SignSTE(SurrogateSign):
    """BNN (Hubara 2016): straight-through estimator clipped to abs(x) <= 1."""

    @staticmethod
    def derivative(x: Tensor) -> Tensor:
        return (x.abs() <= 1).to(x.dtype)


class _ApproxSign(SurrogateSign):
    """Bi-Real (Liu 2018): d/dx = 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere."""

    @staticmethod
    def derivative(x: Tensor) -> Tensor:
        return (2 - 2 * x.abs()).clamp(min=0)


class _EDESign(SurrogateSign):
    """IR-Net (Qin 2020) Error Decay Estimator: d/dx = k * t * (1 - tanh(t x)^2)."""

    @staticmethod
    def derivative(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
        return k * t * (1 - torch.tanh(t * x) ** 2)


def sign_ste(x: Tensor) -> Tensor:
    """sign with the clipped straight-through gradient ``1[|x| <= 1]``."""
    return _SignSTE.apply(x)


def approx_sign(x: Tensor) -> Tensor:
    """sign with Bi-Real's piecewise-polynomial gradient ``max(0, 2 - 2|x|)``."""
    return _ApproxSign.apply(x)


def ede_sign(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """sign with IR-Net's EDE gradient ``k t (1 - tanh(t x)^2)``; t, k are 0-d tensors."""
    return _EDESign.apply(x, t, k)


def standardize_per_channel(w: Tensor) -> Tensor:
    """(W - mean) / std per output channel (unbiased std, as torch.std): (O, ...) -> same shape."""
    dims = tuple(range(1, w.dim()))
    centred = w - w.mean(dim=dims, keepdim=True)
    return centred / centred.std(dim=dims, keepdim=True).clamp_min(1e-12)


def channel_mean_abs(w: Tensor) -> Tensor:
    """Per-output-channel mean(|W|): (O, I, kh, kw) -> (O, 1, 1, 1)."""
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
