"""Sign functions with the surrogate gradients of the binarization literature.

Every forward maps to exactly {-1, +1}: sign(x) = +1 if x > 0, else -1, so sign(0) = -1. That
is how OpenVINO's ``BinaryConvolution`` binarizes its input, so training and the deployed
engine agree bit for bit; it also keeps the zeros of a ReLU output apart from its positive
values. The methods differ only in their backward. Shapes are unchanged: any tensor in, same
shape out.

Each surrogate is one :class:`torch.autograd.Function` with static ``forward``,
``setup_context`` and ``backward`` (the form ``torch.compile`` traces into one graph), saving
only what its backward reads: the input (a float tensor, see :func:`hard_sign` on why not a
bool mask). Under TorchScript (which cannot script autograd Functions) they are the plain
forward sign, so a scripted model infers exactly as the eager one. FX sees each as one call
(``register_notrace_function``), so a traced model keeps the surrogate gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

# Elementwise maths here stays on float tensors: on CPU, torch's kernels that read a bool
# tensor (torch.where(mask, ...), float * bool) run far slower than float ones (a
# (16, 64, 56, 56) where or float * bool took 12-14 ms on one thread against 1 ms for a
# float multiply, torch 2.14 on AMD Zen 4), and the binarizers run them on every activation.


def hard_sign(x: Tensor) -> Tensor:
    """+1 where x > 0, else -1 (so sign(0) = -1): the output set is exactly {-1, +1}.

    sign(x) is -1, 0 or +1 (torch.sign(NaN) is 0); ``threshold`` maps every value not above 0
    to -1. The values of ``torch.where(x > 0, 1, -1)``, in two float kernels and one new
    tensor.
    """
    return F.threshold(torch.sign(x), 0.0, -1.0, inplace=True)


def ste_grad(grad: Tensor, x: Tensor) -> Tensor:
    """The clipped straight-through gradient ``grad * 1[|x| <= 1]``, same shape, in one kernel.

    ATen's ``hardtanh_backward`` (the backward of ``F.hardtanh``) passes ``grad`` where
    lo < x < hi, else 0. With lo and hi the floats of x's dtype next to -1 and +1 (no float of
    that dtype lies between), that is |x| <= 1 exactly. Unlike the product, an inf or NaN
    grad outside the clip gives 0, not NaN, and a NaN x is not defined to give 0.
    """
    bound = 1.0 + torch.finfo(x.dtype).eps
    return torch.ops.aten.hardtanh_backward(grad, x, -bound, bound)


def approx_sign_grad(grad: Tensor, x: Tensor) -> Tensor:
    """``grad`` times Bi-Real's ApproxSign derivative max(0, 2 - 2|x|) (2 + 2x on [-1, 0),
    2 - 2x on [0, 1)): the values of ``grad * (2 - 2 * x.abs()).clamp(min=0)``, in one new
    tensor (a new tensor per operator costs its page faults on every activation)."""
    return torch.abs(x).mul_(-2).add_(2).clamp_(min=0).mul_(grad)


def ede_grad(grad: Tensor, x: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """``grad`` times IR-Net's Error Decay Estimator derivative k t (1 - tanh(t x)^2); t, k
    0-d.

    1 - tanh(z)^2 = 4 s (1 - s) with s = sigmoid(-2|z|): torch's CPU sigmoid ran 6x faster
    than its tanh (torch 2.14, AMD Zen 4), and with s <= 1/2 the product has no cancellation
    (1 - y^2 with y = tanh(z) near 1 has). ATen's ``sigmoid_backward`` gives grad s (1 - s) in
    one kernel, in place; 4 k t scales it last, so a large grad in float16 saturates where the
    derivative is flat to 0, not to inf * 0.
    """
    return ede_grad_unscaled(grad, x, t).mul_(4 * k * t)


def ede_grad_unscaled(grad: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """``grad`` s (1 - s) with s = sigmoid(-2 t |x|): :func:`ede_grad` before its constant
    4 k t, for a backward that folds the constant into a later pass; one new tensor."""
    s = torch.abs(x).mul_(-2 * t).sigmoid_()
    return torch.ops.aten.sigmoid_backward.grad_input(grad, s, grad_input=s)


def training_aware_grad(grad: Tensor, x: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """``grad`` times RBNN's training-aware derivative k max(0, sqrt(2) t - t^2 |x|) (RBNN
    Eq. 15): the values of ``grad * (k * (sqrt(2) t - t^2 |x|).clamp(min=0))``, in one new
    tensor."""
    scaled = torch.abs(x).mul_(-(t * t)).add_(math.sqrt(2.0) * t)
    return scaled.clamp_(min=0).mul_(k).mul_(grad)


class _SignSTE(torch.autograd.Function):
    """BNN (Hubara 2016): straight-through estimator clipped to abs(x) <= 1; saves x (a float
    tensor: a bool mask would take a quarter of the memory but the slow kernels above)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return hard_sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return ste_grad(grad, x)


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
        return approx_sign_grad(grad, x)


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
        return ede_grad(grad, x, t, k), None, None


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
        return training_aware_grad(grad, x, t, k), None, None


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


def channel_mean_abs(w: Tensor) -> Tensor:
    """Per-output-channel mean(|W|): (O, I, kh, kw) -> (O, 1, 1, 1)."""
    return w.abs().mean(dim=_reduce_dims(w), keepdim=True)
