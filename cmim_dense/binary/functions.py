"""Sign functions with the surrogate gradients of the binarization literature.

Every forward maps to exactly {-1, +1}: sign(x) = +1 if x > 0, else -1, so sign(0) = -1. That
is how OpenVINO's ``BinaryConvolution`` binarizes its input, so training and the deployed
engine agree bit for bit; it also keeps the zeros of a ReLU output apart from its positive
values. The methods differ only in their backward. Shapes are unchanged: any tensor in, same
shape out.

Each surrogate is one :class:`torch.autograd.Function` with static ``forward``,
``setup_context`` and ``backward`` (the form ``torch.compile`` traces into one graph), saving
only what its backward reads: a boolean mask for the clipped STE, the input for the smooth
surrogates. Under TorchScript (which cannot script autograd Functions) they are the plain
forward sign, so a scripted model infers exactly as the eager one. FX sees each as one call
(``register_notrace_function``), so a traced model keeps the surrogate gradients.
"""

from __future__ import annotations

import math

import torch
from timm.layers import register_notrace_function
from torch import Tensor


def hard_sign(x: Tensor) -> Tensor:
    """+1 where x > 0, else -1 (so sign(0) = -1): the output set is exactly {-1, +1}."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


def ste_mask(x: Tensor) -> Tensor:
    """The clipped straight-through derivative 1[|x| <= 1] as a boolean mask, x's shape."""
    return x.abs() <= 1


def approx_sign_derivative(x: Tensor) -> Tensor:
    """Bi-Real's ApproxSign derivative max(0, 2 - 2|x|): 2 + 2x on [-1, 0), 2 - 2x on [0, 1)."""
    return (2 - 2 * x.abs()).clamp(min=0)


def ede_derivative(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """IR-Net's Error Decay Estimator derivative k t (1 - tanh(t x)^2); t, k are 0-d."""
    return k * t * (1 - torch.tanh(t * x) ** 2)


def training_aware_derivative(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """RBNN's training-aware derivative k max(0, sqrt(2) t - t^2 |x|) (RBNN Eq. 15)."""
    return k * (math.sqrt(2.0) * t - t * t * x.abs()).clamp(min=0)


class _SignSTE(torch.autograd.Function):
    """BNN (Hubara 2016): straight-through estimator clipped to abs(x) <= 1; saves a bool mask."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return hard_sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(ste_mask(x))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (mask,) = ctx.saved_tensors
        return grad * mask


class _ApproxSign(torch.autograd.Function):
    """Bi-Real (Liu 2018): d/dx = max(0, 2 - 2|x|); saves x."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return hard_sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * approx_sign_derivative(x)


class _EDESign(torch.autograd.Function):
    """IR-Net (Qin 2020) Error Decay Estimator: d/dx = k t (1 - tanh(t x)^2); t, k get none."""

    @staticmethod
    def forward(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
        return hard_sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, t, k = ctx.saved_tensors
        return grad * ede_derivative(x, t, k), None, None


class _TrainingAwareSign(torch.autograd.Function):
    """RBNN (Lin 2020): d/dx = k max(0, sqrt(2) t - t^2 |x|); t, k get none."""

    @staticmethod
    def forward(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
        return hard_sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, t, k = ctx.saved_tensors
        return grad * training_aware_derivative(x, t, k), None, None


@register_notrace_function
def sign_ste(x: Tensor) -> Tensor:
    """sign with the clipped straight-through gradient ``1[|x| <= 1]``."""
    if torch.jit.is_scripting():
        return hard_sign(x)
    return _SignSTE.apply(x)


@register_notrace_function
def approx_sign(x: Tensor) -> Tensor:
    """sign with Bi-Real's piecewise-polynomial gradient ``max(0, 2 - 2|x|)``."""
    if torch.jit.is_scripting():
        return hard_sign(x)
    return _ApproxSign.apply(x)


@register_notrace_function
def ede_sign(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """sign with IR-Net's EDE gradient ``k t (1 - tanh(t x)^2)``; t, k are 0-d tensors."""
    if torch.jit.is_scripting():
        return hard_sign(x)
    return _EDESign.apply(x, t, k)


@register_notrace_function
def rbnn_sign(x: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """sign with RBNN's training-aware gradient ``k max(0, sqrt(2) t - t^2 |x|)``; t, k 0-d."""
    if torch.jit.is_scripting():
        return hard_sign(x)
    return _TrainingAwareSign.apply(x, t, k)


def _reduce_dims(w: Tensor) -> list[int]:
    """Every dim but the first: the per-output-channel reduction of an (O, ...) weight."""
    return list(range(1, w.dim()))


def standardize_per_channel(w: Tensor) -> Tensor:
    """(W - mean) / std per output channel (unbiased std, as torch.std): (O, ...) -> same shape."""
    dims = _reduce_dims(w)
    centred = w - w.mean(dim=dims, keepdim=True)
    return centred / centred.std(dim=dims, keepdim=True).clamp_min(1e-12)


def channel_mean_abs(w: Tensor) -> Tensor:
    """Per-output-channel mean(|W|): (O, I, kh, kw) -> (O, 1, 1, 1)."""
    return w.abs().mean(dim=_reduce_dims(w), keepdim=True)
